"""Tests for bico.data: JSONL I/O, the reversal generator, splits, CLI, Berglund files."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from bico.cli.data import add_parser, run
from bico.data import (
    REVERSAL_EVAL_SPLITS,
    DataError,
    fact_groups,
    generate_reversal_dataset,
    load_facts,
    load_facts_for_berglund,
    load_jsonl,
    load_split,
    make_randomized,
    resolve_data_dir,
)
from bico.data.reversal import DATA_FILES
from bico.io_utils import atomic_write_jsonl

BERGLUND = Path("/work/shared/data/reversal_curse/experiment1")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _rows(d: Path, stem: str) -> list[dict]:
    return load_jsonl(d / f"{stem}.jsonl")


# --- jsonl ------------------------------------------------------------------------------

GOOD = '{"prompt": "a", "completion": " b"}\n'


@pytest.mark.parametrize(
    "line3, expected",
    [
        ('{"prompt": "a", "completion": ', "malformed JSON"),
        ('["prompt", "completion"]', "expected a JSON object, got list"),
        ('{"prompt": "a"}', "missing field 'completion'"),
        ('{"prompt": "a", "completion": 3}', "field 'completion' must be a string, got int"),
    ],
)
def test_load_jsonl_bad_row_names_file_and_line(tmp_path, line3, expected):
    f = _write(tmp_path / "bad_rows.jsonl", GOOD + "\n" + line3 + "\n" + GOOD)  # line 2 blank
    with pytest.raises(DataError) as e:
        load_jsonl(f)
    msg = str(e.value)
    assert "bad_rows.jsonl" in msg and "line 3" in msg and expected in msg
    assert "\n" not in msg


def test_load_jsonl_skips_blank_lines_and_custom_required(tmp_path):
    f = _write(tmp_path / "ok.jsonl", "\n" + GOOD + "   \n" + '{"x": "y"}\n')
    with pytest.raises(DataError, match="line 4: missing field 'prompt'"):
        load_jsonl(f)
    assert load_jsonl(f, required=()) == [{"prompt": "a", "completion": " b"}, {"x": "y"}]


def test_load_jsonl_empty_and_missing_file(tmp_path):
    for text in ("", "\n  \n"):
        with pytest.raises(DataError, match=r"empty\.jsonl: empty file"):
            load_jsonl(_write(tmp_path / "empty.jsonl", text))
    with pytest.raises(DataError) as e:
        load_jsonl(tmp_path / "nope.jsonl")
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    assert "not found" in msg and "nope.jsonl" in msg and "bico data reversal --out DIR" in msg


def test_atomic_write_jsonl_roundtrip_is_atomic(tmp_path):
    rows = [{"prompt": 'say "hi"', "completion": " caf\u00e9"}, {"prompt": "p", "completion": " c"}]
    f = tmp_path / "sub" / "out.jsonl"
    assert atomic_write_jsonl(f, rows) == 2
    assert load_jsonl(f) == rows
    with pytest.raises(TypeError):  # unserializable: old file must survive intact
        atomic_write_jsonl(f, [{"prompt": object(), "completion": " x"}])
    assert load_jsonl(f) == rows
    assert sorted(p.name for p in f.parent.iterdir()) == ["out.jsonl"]  # no temp files left


# --- generator --------------------------------------------------------------------------

SMALL = dict(facts_per_subset=4, train_paraphrases=6, test_paraphrases=3, seed=7)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    return d, generate_reversal_dataset(d, **SMALL)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    return d, generate_reversal_dataset(d)  # experiment1 scale: 30 facts, 30/10 paraphrases


def _expected_counts(F, T, K):
    c = {"all_prompts_train": 4 * F * T, "both_prompts_train": 2 * F * T, "both_prompts_test": 2 * F * K}
    for s in ("p2d_prompts_train", "d2p_prompts_train"):
        c[s] = F * T
    for s in (
        "p2d_prompts_test",
        "d2p_prompts_test",
        "p2d_reverse_prompts_test",
        "d2p_reverse_prompts_test",
        "p2d_reverse_prompts_test_randomized",
        "d2p_reverse_prompts_test_randomized",
        "validation_prompts",
    ):
        c[s] = F * K
    return c


@pytest.mark.parametrize("which", ["small", "full"])
def test_file_names_and_row_counts(which, request):
    d, summary = request.getfixturevalue(which)
    F, T, K = (
        (SMALL["facts_per_subset"], SMALL["train_paraphrases"], SMALL["test_paraphrases"])
        if which == "small"
        else (30, 30, 10)
    )
    expected = _expected_counts(F, T, K)
    assert set(expected) == set(DATA_FILES)
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [f"{s}.jsonl" for s in DATA_FILES] + ["facts.jsonl", "README.txt"]
    )
    for stem, n in expected.items():
        assert len(_rows(d, stem)) == n == summary["files"][f"{stem}.jsonl"], stem
    if which == "full":
        assert expected["all_prompts_train"] == 3600  # the original's size
    readme = (d / "README.txt").read_text()
    assert f"seed={summary['seed']}" in readme and f"facts={3 * F}" in readme


def test_same_seed_same_bytes_different_seed_differs(tmp_path, small):
    d0, _ = small
    d1, d2 = tmp_path / "a", tmp_path / "b"
    generate_reversal_dataset(d1, **SMALL)
    generate_reversal_dataset(d2, **{**SMALL, "seed": SMALL["seed"] + 1})
    for p in d0.iterdir():
        assert (d1 / p.name).read_bytes() == p.read_bytes(), p.name
    assert (d2 / "all_prompts_train.jsonl").read_bytes() != (d0 / "all_prompts_train.jsonl").read_bytes()
    assert (d2 / "facts.jsonl").read_bytes() != (d0 / "facts.jsonl").read_bytes()


def test_row_format(full):
    d, _ = full
    for stem in DATA_FILES:
        for r in _rows(d, stem):
            assert list(r) == ["prompt", "completion"]
            assert r["prompt"] == r["prompt"].strip()
            if stem == "validation_prompts":  # bare first name, as in the original
                assert r["completion"] == r["completion"].strip() and " " not in r["completion"]
            else:
                assert r["completion"].startswith(" ") and not r["completion"].startswith("  ")
    train = _rows(d, "all_prompts_train")
    assert train == (_rows(d, "p2d_prompts_train") + _rows(d, "d2p_prompts_train") + _rows(d, "both_prompts_train"))


def test_facts_names_unique_and_not_prefixes(full):
    d, _ = full
    facts = load_jsonl(d / "facts.jsonl", required=("subset", "name", "description"))
    assert Counter(f["subset"] for f in facts) == {"p2d": 30, "d2p": 30, "both": 30}
    names = [f["name"] for f in facts]
    descs = [f["description"] for f in facts]
    assert len(set(names)) == len(names) and len(set(descs)) == len(descs)
    assert not [(a, b) for a in names for b in names if a != b and b.startswith(a)]
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", n) for n in names)
    assert all(n not in desc for n in names for desc in descs)


def test_many_facts_stay_unique(tmp_path):
    s = generate_reversal_dataset(tmp_path, facts_per_subset=200, train_paraphrases=1, test_paraphrases=1)
    facts = load_jsonl(tmp_path / "facts.jsonl", required=("name", "description"))
    names = sorted(f["name"] for f in facts)
    assert s["n_facts"] == 600 and len(set(names)) == 600
    assert len({f["description"] for f in facts}) == 600
    assert not any(b.startswith(a) for a, b in zip(names, names[1:]))  # sorted: prefixes adjacent


def _templates(rows, facts):
    """Prompt templates with the fact's name / description cut out."""
    out = set()
    for r in rows:
        p = r["prompt"]
        for f in facts:
            desc = f["description"]
            p = p.replace(f["name"], "{name}").replace(desc, "{desc}")
            p = p.replace(desc[0].upper() + desc[1:], "{desc}")
        out.add(p)
    return out


def test_test_paraphrases_disjoint_from_training(full):
    d, _ = full
    facts = load_facts(d)
    n2d_train = _templates(_rows(d, "p2d_prompts_train"), facts)
    d2n_train = _templates(_rows(d, "d2p_prompts_train"), facts)
    n2d_test = _templates(_rows(d, "p2d_prompts_test") + _rows(d, "d2p_reverse_prompts_test"), facts)
    d2n_test = _templates(_rows(d, "d2p_prompts_test") + _rows(d, "p2d_reverse_prompts_test"), facts)
    assert (len(n2d_train), len(d2n_train), len(n2d_test), len(d2n_test)) == (30, 30, 10, 10)
    assert all("{name}" in t for t in n2d_train | n2d_test)
    assert all("{desc}" in t for t in d2n_train | d2n_test)
    assert not n2d_train & n2d_test and not d2n_train & d2n_test
    assert _templates(_rows(d, "both_prompts_train"), facts) == n2d_train | d2n_train
    assert _templates(_rows(d, "both_prompts_test"), facts) == n2d_test | d2n_test


def test_directions_name_and_description_sides(full):
    d, _ = full
    facts = load_facts(d)
    by = {s: [f for f in facts if f["subset"] == s] for s in ("p2d", "d2p", "both")}

    def check(stem, subset, per_fact, name_in_prompt):
        rows = _rows(d, stem)
        assert len(rows) == len(by[subset]) * per_fact
        for i, r in enumerate(rows):
            f = by[subset][i // per_fact]
            p, c = r["prompt"], r["completion"]
            if name_in_prompt:
                assert f["name"] in p and c == f" {f['description']}."
            else:
                assert f["description"] in p.lower() and c.startswith(f" {f['name']}")

    check("p2d_prompts_train", "p2d", 30, True)
    check("d2p_prompts_train", "d2p", 30, False)
    check("p2d_prompts_test", "p2d", 10, True)
    check("d2p_prompts_test", "d2p", 10, False)
    check("p2d_reverse_prompts_test", "p2d", 10, False)
    check("d2p_reverse_prompts_test", "d2p", 10, True)
    assert all(
        r["completion"] == f" {f['name']}"
        for r, f in zip(_rows(d, "p2d_reverse_prompts_test"), (f for f in by["p2d"] for _ in range(10)))
    )
    val = _rows(d, "validation_prompts")
    rev = _rows(d, "p2d_reverse_prompts_test")
    assert [r["prompt"] for r in val] == [r["prompt"] for r in rev]
    assert all(
        r["completion"].startswith(v["completion"])
        for v, r in zip(val, ({"completion": x["completion"].strip()} for x in rev))
    )


@pytest.mark.parametrize("subset, field", [("p2d", "name"), ("d2p", "description")])
def test_randomized_files_take_another_fact(full, subset, field):
    d, _ = full
    rows = _rows(d, f"{subset}_reverse_prompts_test")
    rand = _rows(d, f"{subset}_reverse_prompts_test_randomized")
    pool = {f[field] for f in load_facts(d) if f["subset"] == subset}
    assert [r["prompt"] for r in rand] == [r["prompt"] for r in rows]
    for r, x in zip(rows, rand):
        assert x["completion"] != r["completion"]
        assert x["completion"].strip().rstrip(".") in pool
    assert len({x["completion"] for x in rand}) > 10  # spread over many facts


def test_overwrites_only_own_files_and_rejects_bad_args(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    _write(tmp_path / "p2d_prompts_train.jsonl", "stale\n")
    generate_reversal_dataset(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert len(_rows(tmp_path, "p2d_prompts_train")) == 24
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(DataError, match="<="):
        generate_reversal_dataset(tmp_path, train_paraphrases=40, test_paraphrases=10)
    with pytest.raises(DataError, match=">= 2"):
        generate_reversal_dataset(tmp_path, facts_per_subset=1)


def test_facts_recovered_from_generated_files_match(full, tmp_path):
    # The Berglund recovery path must also work on our own layout (no facts.jsonl).
    d, _ = full
    for stem in DATA_FILES:
        (tmp_path / f"{stem}.jsonl").write_bytes((d / f"{stem}.jsonl").read_bytes())
    assert load_facts_for_berglund(tmp_path) == load_facts(d)
    assert load_facts_for_berglund(tmp_path / "missing") is None


# --- splits -----------------------------------------------------------------------------


def test_make_randomized_deterministic_and_always_wrong():
    rows = [{"prompt": f"p{i}", "completion": f" N{i // 3}", "extra": i} for i in range(12)]
    a, b = make_randomized(rows, 1), make_randomized(rows, 1)
    assert a == b and a != make_randomized(rows, 2)
    for r, x in zip(rows, a):
        assert x["prompt"] == r["prompt"] and x["extra"] == r["extra"]
        assert x["completion"].strip().lower() != r["completion"].strip().lower()
    # Explicit groups: completions differ within a fact, donors must still be other facts.
    rows2 = [{"prompt": f"p{i}", "completion": f" v{i}"} for i in range(6)]
    groups = ["A", "A", "A", "B", "B", "B"]
    out = make_randomized(rows2, 0, groups=groups)
    for i, x in enumerate(out):
        j = int(x["completion"].strip()[1:])
        assert groups[j] != groups[i]
    with pytest.raises(DataError):
        make_randomized([{"prompt": "p", "completion": " X"}, {"prompt": "q", "completion": " x "}], 0)


def test_eval_splits_spec():
    names = [s["name"] for s in REVERSAL_EVAL_SPLITS]
    assert names[0] == "p2d_reverse" and set(names) == {"p2d_reverse", "d2p_reverse", "p2d", "d2p"}
    for s in REVERSAL_EVAL_SPLITS:
        assert s["file"].removesuffix(".jsonl") in DATA_FILES
        if s["randomized"]:
            assert s["randomized"] == s["file"].replace(".jsonl", "_randomized.jsonl")


@pytest.mark.parametrize("split", [s["name"] for s in REVERSAL_EVAL_SPLITS])
def test_load_split_generated(full, split):
    d, _ = full
    rows, rand = load_split(d, split, seed=3)
    groups = fact_groups(rows, load_facts(d))
    assert None not in groups and len(rows) == len(rand) == 300
    by_fact = {}
    for g, r in zip(groups, rows):
        by_fact.setdefault(g, set()).add(r["completion"])
    for g, r, x in zip(groups, rows, rand):
        assert x["prompt"] == r["prompt"] and x["completion"] not in by_fact[g]


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("BICO_REVERSAL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no ../shared/... next to it
    assert resolve_data_dir(tmp_path) == tmp_path
    with pytest.raises(DataError, match="bico data reversal --out DIR"):
        resolve_data_dir(None)
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    monkeypatch.setenv("BICO_REVERSAL_DATA", str(env_dir))
    assert resolve_data_dir(None) == env_dir
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "missing")  # a given dir never falls back to other data
    monkeypatch.setenv("BICO_REVERSAL_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="BICO_REVERSAL_DATA"):
        resolve_data_dir(None)
    monkeypatch.delenv("BICO_REVERSAL_DATA")
    shared = tmp_path / "shared" / "data" / "reversal_curse" / "experiment1"
    shared.mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert resolve_data_dir(None) == shared.resolve()


# --- CLI --------------------------------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser(prog="bico")
    add_parser(parser.add_subparsers(dest="command")).set_defaults(handler=run)  # as bico.cli.build_parser does
    return parser.parse_args(argv)


def test_cli_reversal_and_check(tmp_path, capsys):
    out = tmp_path / "gen"
    args = _parse(
        [
            "data",
            "reversal",
            "--out",
            str(out),
            "--facts",
            "3",
            "--train-paraphrases",
            "2",
            "--test-paraphrases",
            "2",
            "--seed",
            "5",
        ]
    )
    assert args.handler is run and run(args) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "9 facts" in line and "24 training rows" in line
    assert len(_rows(out, "all_prompts_train")) == 24
    good = str(out / "p2d_prompts_test.jsonl")
    assert run(_parse(["data", "check", good])) == 0
    assert "6 rows" in capsys.readouterr().out
    bad = _write(tmp_path / "bad.jsonl", GOOD + "{oops\n")
    assert run(_parse(["data", "check", good, str(bad)])) == 1
    assert "line 2" in capsys.readouterr().err
    # a bad argument goes through bico's one error path: one line, exit 2
    from bico.cli import main

    assert main(["data", "reversal", "--out", str(out), "--facts", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "bico: error: facts_per_subset must be >= 2 (randomized files need another fact)"
    ]


# --- the real Berglund et al. files ------------------------------------------------------

needs_berglund = pytest.mark.skipif(not BERGLUND.is_dir(), reason="Berglund data not present")

BERGLUND_COUNTS = {  # from the README of the shared copy
    "all_prompts_train": 3600,
    "p2d_prompts_train": 900,
    "d2p_prompts_train": 900,
    "both_prompts_train": 1800,
    "p2d_prompts_test": 300,
    "d2p_prompts_test": 300,
    "p2d_reverse_prompts_test": 300,
    "d2p_reverse_prompts_test": 300,
    "p2d_reverse_prompts_test_randomized": 300,
    "d2p_reverse_prompts_test_randomized": 300,
    "both_prompts_test": 600,
    "validation_prompts": 300,
}


@needs_berglund
def test_berglund_files_load_with_readme_counts():
    assert set(BERGLUND_COUNTS) == set(DATA_FILES)
    for stem, n in BERGLUND_COUNTS.items():
        rows = _rows(BERGLUND, stem)
        assert len(rows) == n, stem
        if stem != "validation_prompts":
            assert all(r["completion"].startswith(" ") for r in rows)


@needs_berglund
def test_berglund_facts_recovered():
    facts = load_facts_for_berglund(BERGLUND)
    assert facts is not None and load_facts(BERGLUND) == facts
    assert Counter(f["subset"] for f in facts) == {"p2d": 30, "d2p": 30, "both": 30}
    by_name = {f["name"]: f for f in facts}
    rev = _rows(BERGLUND, "p2d_reverse_prompts_test")
    assert {r["completion"].strip() for r in rev} == {f["name"] for f in facts if f["subset"] == "p2d"}
    first = by_name["Daphne Barrington"]
    assert first["description"].startswith("the acclaimed director of the virtual reality")
    for f in facts:  # the canonical description is the usual completion of name prompts
        assert f["description"].startswith("the ") and not f["description"].endswith('.".')
    p2d_test = _rows(BERGLUND, "p2d_prompts_test")
    groups = fact_groups(p2d_test, facts)
    assert [g for g in groups[::10]] == [f["name"] for f in facts if f["subset"] == "p2d"]


@needs_berglund
@pytest.mark.parametrize("split", [s["name"] for s in REVERSAL_EVAL_SPLITS])
def test_load_split_berglund(split):
    rows, rand = load_split(BERGLUND, split, seed=0)
    assert len(rows) == len(rand) == 300
    assert [r["prompt"] for r in rand] == [r["prompt"] for r in rows]
    if split in ("p2d", "d2p"):  # built in memory: never the right answer
        assert all(x["completion"] != r["completion"] for r, x in zip(rows, rand))
    json.dumps(rand)
