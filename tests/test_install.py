"""An installed bico (a wheel, not the source checkout) has its recipes and DeepSpeed configs.

The wheel is built from a copy of the package's files (nothing written into the checkout) and
installed with ``--no-deps`` into a fresh virtualenv that sees this environment's packages
(torch, transformers, ...) through a ``.pth`` file. That ``.pth`` line adds the test
environment's site-packages as a plain path, so the ``.pth`` files inside it, among them the
editable install of this checkout, are not run: the new environment imports the wheel's bico,
which the test checks before running ``bico demo --quick`` from a folder outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FILES = ("pyproject.toml", "README.md", "bico", "kernels", "recipes")
PROBE = """
import json, sys
import bico, bico_kernels
from bico.resources import recipes_dir
from bico.training.deepspeed_engine import resolve_config
print(json.dumps({"bico": bico.__file__, "kernels": bico_kernels.__file__, "recipes": str(recipes_dir()),
                  "zero2": resolve_config("zero2")[1], "typed": resolve_config("recipes/deepspeed/zero3.json")[1],
                  "finders": [type(f).__name__ for f in sys.meta_path]}))
"""


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo_outside_the_checkout(tmp_path):
    began = time.time()
    src = tmp_path / "src"
    src.mkdir()
    for name in PACKAGE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ]
    )
    (wheel,) = (tmp_path / "dist").glob("bico-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(site) / "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --force-reinstall: pip sees the editable bico's metadata on the .pth path and would skip the wheel
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--force-reinstall", str(wheel)])

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    work = tmp_path / "elsewhere"  # outside the checkout: nothing under ROOT can be found by accident
    work.mkdir()
    probe = json.loads(_run([str(python), "-c", PROBE], cwd=work, env=env).stdout)
    for key in ("bico", "kernels", "recipes", "zero2", "typed"):
        assert Path(probe[key]).is_relative_to(Path(site)), (key, probe)  # the wheel's files, not the checkout's
    assert Path(probe["zero2"]).is_file() and Path(probe["zero2"]).name == "zero2.json"
    assert not [f for f in probe["finders"] if "editable" in f.lower()], probe["finders"]

    done = _run([str(venv / "bin" / "bico"), "demo", "--quick", "--out", "out"], cwd=work, env=env)
    report = json.loads((work / "out" / "demo.json").read_text())
    assert set(report) == {"base", "ntp", "bico_names"} and (work / "out" / "demo.md").is_file()
    assert "demo finished" in done.stdout
    print(f"build + install + demo --quick: {time.time() - began:.1f} s")


def test_typed_recipe_paths_work_from_any_folder(tmp_path, monkeypatch):
    """`recipes/...` as the docs write it: the file in the current folder if there is one, else bico's."""
    from bico.config import RecipeError, load_recipe
    from bico.resources import recipes_dir
    from bico.tools.ablate import load_spec
    from bico.training.deepspeed_engine import resolve_config

    monkeypatch.chdir(tmp_path)
    assert load_recipe("recipes/demo/tiny.yaml").model.name == "tiny-random"
    assert Path(resolve_config("recipes/deepspeed/zero2.json")[1]) == recipes_dir() / "deepspeed" / "zero2.json"
    assert Path(load_spec("recipes/ablations/reversal_objectives_tiny.yaml")["base"]).is_file()
    with pytest.raises(RecipeError, match="recipe file not found: recipes/demo/nope.yaml"):
        load_recipe("recipes/demo/nope.yaml")
    own = tmp_path / "recipes" / "demo" / "tiny.yaml"  # a user's own file of that name wins
    own.parent.mkdir(parents=True)
    own.write_text("model: {name: tiny-random, layers: 3}\n")
    assert load_recipe("recipes/demo/tiny.yaml").model.layers == 3
