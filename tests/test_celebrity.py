"""The celebrity benchmark on a tiny model: both directions, Wilson intervals, report files, errors;
and the Wilson interval itself against known values."""

import json
import math

import pytest

from bico.evaluation.celebrity import CelebrityDataError, evaluate_celebrity, load_pairs, questions, write_report
from bico.evaluation.stats import wilson_interval

PAIRS = """child,parent,parent_type,child_prediction,can_reverse
Ann Lee,Bob Lee,father,,False
Ann Lee,Cara Lee,mother,Ann Lee,True
Dan Roe,Eve Roe,mother,,False
Fay Poe,Gus Poe,father,,False
Hal Poe,Gus Poe,father,,False
"""


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10)
    assert math.isclose(low, 0.2366, abs_tol=1e-4) and math.isclose(high, 0.7634, abs_tol=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and math.isclose(high, 0.2775, abs_tol=1e-4)  # not zero-width at 0
    assert math.isclose(wilson_interval(10, 10)[1], 1.0) and all(math.isnan(x) for x in wilson_interval(0, 0))


def test_questions_follow_the_released_prompt(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(PAIRS)
    pairs = load_pairs(path)
    q = questions(pairs)
    fwd, rev = q["forward (child -> parent)"], q["reverse (parent -> child)"]
    assert fwd["prompts"][0].endswith("\nQ: Who is Ann Lee's father?\nA:")
    assert fwd["prompts"][0].startswith("Below is a converation with a helpful and terse assistant.")
    assert rev["prompts"][3].endswith("\nQ: Name a child of Gus Poe.\nA:")
    assert rev["accepted"][3] == ["Fay Poe", "Hal Poe"]  # any child of that parent counts
    for i, p in enumerate(pairs):  # distractors are never a right answer
        assert fwd["distractors"][i] != p["parent"] and rev["distractors"][i] not in rev["accepted"][i]


def test_evaluate_and_report(tmp_path):
    from bico.models import load_tokenizer
    from helpers import make_llama

    tok = load_tokenizer("tiny-random")
    model = make_llama(vocab=len(tok), hidden=32, heads=2, kv_heads=1, layers=1)
    path = tmp_path / "pairs.csv"
    path.write_text(PAIRS)
    result = evaluate_celebrity(model, tok, load_pairs(path), max_new_tokens=3, batch_size=4, progress=False)
    assert set(result["directions"]) == {"forward (child -> parent)", "reverse (parent -> child)"}
    for d in result["directions"].values():
        assert (
            d["n"] == 5 and 0 <= d["exact_match"]["ci95"][0] <= d["exact_match"]["value"] <= d["exact_match"]["ci95"][1]
        )
        assert math.isfinite(d["mean_logprob"])
    files = write_report(result, tmp_path / "out", "tiny")
    saved = json.loads(files["json"].read_text())
    assert saved["model"] == "tiny" and "hits" not in saved["directions"]["forward (child -> parent)"]
    assert "Wilson" in files["md"].read_text() and files["png"].stat().st_size > 0


def test_bad_files(tmp_path):
    with pytest.raises(CelebrityDataError, match="not found"):
        load_pairs(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("kid,parent\nA,B\n")
    with pytest.raises(CelebrityDataError, match="missing column"):
        load_pairs(bad)
    bad.write_text("child,parent,parent_type\nA,,mother\n")
    with pytest.raises(CelebrityDataError, match="line 2"):
        load_pairs(bad)


def test_cli_celebrity_suite(tmp_path, capsys):
    from bico.cli import main

    path = tmp_path / "pairs.csv"
    path.write_text(PAIRS)
    assert (
        main(
            [
                "eval",
                "--suite",
                "celebrity",
                "--model",
                "tiny-random",
                "--pairs",
                str(path),
                "--out",
                str(tmp_path / "out"),
                "--limit",
                "3",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    assert "| forward (child -> parent) | 3 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "celebrity.json").read_text())["n_pairs"] == 3
    assert main(["eval", "--suite", "celebrity", "--model", "tiny-random", "--pairs", str(tmp_path / "x.csv")]) == 2
    assert "not found" in capsys.readouterr().err
