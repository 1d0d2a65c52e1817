"""The checkout shadows nothing: with the repository root on sys.path (``python -m``, pytest),
``import kernels`` and ``import recipes`` still find what is installed, and bico's commands work.

Each check runs in a subprocess whose working directory is the repository root, because that is
where ``python -m pytest`` and ``python -m bico`` put the root first on sys.path.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

from helpers import ROOT

# Root folders that may be Python packages: only bico's own. Everything else at the root is a folder
# of files (kernels/ holds the package bico_kernels, recipes/ is data).
OWN_PACKAGES = {"bico"}
# Names at the root that someone else owns as a package on PyPI (kernels: a dependency of transformers).
FOREIGN = ("kernels", "recipes")


def run_at_root(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_no_root_folder_but_bico_is_a_package():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= OWN_PACKAGES, f"importable root folders would shadow PyPI packages: {packages - OWN_PACKAGES}"


RESOLVE = """
import importlib.util, json, sys
def where(name):
    spec = importlib.util.find_spec(name)
    return None if spec is None else {"origin": spec.origin, "locations": list(spec.submodule_search_locations or [])}
before = {name: where(name) for name in %r}
import bico
after = {name: where(name) for name in %r}
print(json.dumps({"before": before, "after": after, "path0": sys.path[0]}))
"""


def test_import_bico_changes_nothing_and_the_root_shadows_nothing():
    proc = run_at_root("-c", RESOLVE % (FOREIGN, FOREIGN))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["before"] == result["after"], "importing bico changed what these names resolve to"
    for name, spec in result["after"].items():
        # None (not installed) or a namespace portion (no origin) is harmless: any installed
        # regular package of that name wins over a namespace candidate.
        origin = (spec or {}).get("origin")
        if origin and origin != "namespace":
            assert not origin.startswith(str(ROOT) + "/" + name), f"{name} resolves to the checkout: {origin}"


def test_pypi_kernels_and_transformers_import_from_the_root():
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the PyPI package 'kernels' is not installed (transformers did not ask for it)")
    proc = run_at_root(
        "-c", "import kernels, transformers, transformers.integrations.hub_kernels; print(kernels.__file__)"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "site-packages" in proc.stdout and str(ROOT / "kernels") not in proc.stdout, proc.stdout


def test_bico_help_and_test_collection_work_from_the_root():
    proc = run_at_root("-m", "bico", "--help")
    assert proc.returncode == 0 and "usage" in proc.stdout, proc.stderr[-3000:]
    proc = run_at_root("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", timeout=600)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "tests collected" in proc.stdout or "tests/" in proc.stdout
