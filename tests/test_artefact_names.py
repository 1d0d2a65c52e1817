"""Artefacts are named by what they are, not by when: no recipe, result folder or test file called
``*_new``, ``*-v2``, ``*_old`` or ``stage1``; superseded results live in ``benchmarks/results/archive/``
with a README naming what superseded them; and every recipe or result path the docs cite exists."""

import re

from helpers import ROOT

BY_WHEN = re.compile(r"([_-](new|old|v\d+)$)|stage\d")
DOCS = [
    "README.md",
    *(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
    *(p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmarks").glob("NOTES*.md")),
    *(p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmarks" / "results").glob("*/README.md")),
    *(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").glob("*/*.yaml")),
]


def test_no_artefact_is_named_by_when_it_was_made():
    named = [
        *(ROOT / "recipes").glob("*/*"),
        *(ROOT / "benchmarks" / "results").iterdir(),
        *(ROOT / "benchmarks" / "results" / "archive").iterdir(),
        *(ROOT / "tests").rglob("test_*.py"),
    ]
    assert named
    assert not [p.relative_to(ROOT).as_posix() for p in named if BY_WHEN.search(p.name.split(".")[0])]


def test_archived_results_say_what_superseded_them():
    archive = ROOT / "benchmarks" / "results" / "archive"
    readme = (archive / "README.md").read_text()
    for folder in (p for p in archive.iterdir() if p.is_dir()):
        assert f"`{folder.name}/`" in readme
    for current in re.findall(r"`\.\./([\w.-]+)/`", readme):
        assert (archive.parent / current).is_dir()


def test_every_recipe_and_result_path_the_docs_cite_exists():
    cited = set()
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        base = (ROOT / doc).parent
        cited |= {
            (ROOT / m).as_posix()
            for m in re.findall(r"(?<![\w/.-])((?:benchmarks/results|recipes/ablations)/[\w.+-]+)(?![\w.+<-])", text)
        }
        cited |= {
            (base / m).resolve().as_posix()
            for m in re.findall(r"\]\(((?:\.\./)*(?:benchmarks/)?results/[\w.+-]+)", text)
        }
    assert len(cited) > 10
    missing = sorted(c for c in cited if not (ROOT / c).exists())
    assert not missing, f"cited but missing: {missing}"


def test_every_relative_link_in_the_readme_and_docs_resolves():
    """The manual moved from the README to docs/: a link that points at nothing is a broken page."""
    broken = []
    for doc in ["README.md", *(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]:
        base = (ROOT / doc).parent
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)", (ROOT / doc).read_text()):
            if not re.match(r"^(https?|mailto):", target) and not (base / target).exists():
                broken.append(f"{doc}: {target}")
    assert not broken, broken
