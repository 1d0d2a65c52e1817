"""The command line: one-line errors with exit status 2, and the commands end to end."""

import json
from pathlib import Path

import pytest

from bico.cli import main
from bico.config import RecipeError
from helpers import TINY_MODEL

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "recipes" / "demo" / "tiny.yaml")
SMALL = [
    *TINY_MODEL,
    "train.progress=false",
    "train.max_steps=2",
    "eval.limit=4",
]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("bico: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_recipe_key(capsys, reversal_dir):
    code, _, err = run(capsys, "train", TINY, f"data.dir={reversal_dir}", "train.lrate=1")
    one_line_error(code, err, "unknown recipe key 'train.lrate'", "valid keys")


def test_unknown_objective_and_option(capsys, reversal_dir, tmp_path):
    code, _, err = run(
        capsys,
        "train",
        TINY,
        f"data.dir={reversal_dir}",
        "objective.name=mystery",
        f"train.output_dir={tmp_path}",
        *SMALL,
    )
    one_line_error(code, err, "unknown objective 'mystery'")
    code, _, err = run(
        capsys,
        "train",
        TINY,
        f"data.dir={reversal_dir}",
        "objective.name=bico",
        "objective.options.ratio=0.2",
        f"train.output_dir={tmp_path}",
        *SMALL,
    )
    one_line_error(code, err, "has no option(s) ratio")


def test_missing_and_malformed_data(capsys, tmp_path):
    code, _, err = run(capsys, "train", TINY, f"data.dir={tmp_path / 'nowhere'}", f"train.output_dir={tmp_path}")
    one_line_error(code, err, "does not exist", "bico data reversal")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "p2d_prompts_train.jsonl").write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "c"}\n')
    code, _, err = run(capsys, "train", TINY, f"data.dir={bad}", f"train.output_dir={tmp_path / 'o'}", *SMALL)
    one_line_error(code, err, "p2d_prompts_train.jsonl", "line 2", "completion")
    (bad / "p2d_prompts_train.jsonl").write_text("")
    code, _, err = run(capsys, "train", TINY, f"data.dir={bad}", f"train.output_dir={tmp_path / 'o'}", *SMALL)
    one_line_error(code, err, "p2d_prompts_train.jsonl")


def test_missing_model_folder(capsys, reversal_dir, tmp_path):
    code, _, err = run(capsys, "train", TINY, f"data.dir={reversal_dir}", f"model.name={tmp_path / 'nomodel'}")
    one_line_error(code, err, "neither a preset", "config.json")


def test_bad_arguments_are_one_line_exit_2(capsys):
    """argparse's own errors (a missing or unknown argument) take bico's one error path too."""
    code, _, err = run(capsys, "eval")
    one_line_error(code, err, "bico eval: the following arguments are required: --model", "bico eval --help")
    assert "usage:" not in err
    code, _, err = run(capsys, "data", "reversal", "--facts", "x", "--out", "o")
    one_line_error(code, err, "--facts", "invalid int value")
    code, _, err = run(capsys, "nonsense")
    one_line_error(code, err, "invalid choice: 'nonsense'")


def test_eval_options_are_checked_like_the_recipe_keys(capsys, tmp_path):
    """`bico eval` options set eval.* keys: same ranges, named as typed, before any model loads."""
    for option in ("--limit", "--batch-size", "--max-new-tokens"):
        code, _, err = run(capsys, "eval", "--model", str(tmp_path / "absent"), option, "0")
        one_line_error(code, err, f"{option} must be >= 1")


def test_train_then_eval_end_to_end(capsys, reversal_dir, tmp_path):
    code, out, _ = run(capsys, "train", TINY, f"data.dir={reversal_dir}", f"train.output_dir={tmp_path}", *SMALL)
    assert code == 0 and "| ntp | p2d_prompts_test |" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["splits"]) == {"p2d_prompts_test", "p2d_reverse_prompts_test"}
    for metrics in report["splits"].values():
        assert {"n", "exact_match", "substring_match", "mean_logprob", "logprob_win_rate"} <= set(metrics)
    assert (tmp_path / "eval.png").stat().st_size > 1000
    code, out, _ = run(
        capsys,
        "eval",
        "--model",
        str(tmp_path / "model"),
        "--data",
        str(reversal_dir),
        "--splits",
        "p2d_reverse_prompts_test",
        "--limit",
        "4",
        "--max-new-tokens",
        "8",
        "--out",
        str(tmp_path / "ev"),
    )
    again = json.loads((tmp_path / "ev" / "eval.json").read_text())["splits"]["p2d_reverse_prompts_test"]
    # The saved model evaluates exactly like the in-memory one.
    assert again == report["splits"]["p2d_reverse_prompts_test"]


def test_demo_quick(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--quick", "--out", str(tmp_path), *SMALL[:-1])
    assert code == 0
    runs = json.loads((tmp_path / "demo.json").read_text())
    assert set(runs) == {"base", "ntp", "bico_names"}  # base: the model before finetuning
    assert (tmp_path / "demo.png").is_file() and "| bico_names | p2d_reverse_prompts_test |" in out
    assert "| base | p2d_reverse_prompts_test |" in out


def test_data_commands(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "data",
        "reversal",
        "--out",
        str(tmp_path),
        "--facts",
        "2",
        "--train-paraphrases",
        "3",
        "--test-paraphrases",
        "2",
    )
    assert code == 0 and (tmp_path / "p2d_reverse_prompts_test_randomized.jsonl").is_file()
    code, out, _ = run(capsys, "data", "check", str(tmp_path / "p2d_prompts_train.jsonl"))
    assert code == 0 and "6 rows" in out


def test_demo_arms_option(capsys, tmp_path):
    code, _, err = run(capsys, "demo", "--quick", "--arms", "ntp,nope", "--out", str(tmp_path))
    assert code == 2 and "smollm2_nope.yaml" in err
    code, out, _ = run(capsys, "demo", "--quick", "--arms", "ntp", "--out", str(tmp_path), *SMALL[:-1])
    assert code == 0 and set(json.loads((tmp_path / "demo.json").read_text())) == {"base", "ntp"}


def test_demo_reruns_into_the_same_folder(capsys, tmp_path):
    for _ in range(2):
        code, _, err = run(capsys, "demo", "--quick", "--arms", "ntp", "--out", str(tmp_path), *SMALL[:-1])
        assert code == 0, err


def test_every_error_class_of_bico_is_a_bico_error():
    """One family: each ``...Error`` class defined in bico is a BicoError, so the CLI prints it in one line."""
    import importlib
    import inspect
    import pkgutil

    import bico
    from bico.errors import BicoError

    found = {}
    for info in pkgutil.walk_packages(bico.__path__, "bico."):
        if info.name.endswith("__main__") or info.name.startswith("bico.recipes"):
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if name.endswith("Error") and cls.__module__ == info.name:
                found[f"{info.name}.{name}"] = cls
    assert len(found) >= 13, sorted(found)
    assert [name for name, cls in found.items() if not issubclass(cls, BicoError)] == []


@pytest.mark.parametrize(
    "error, shown",
    [
        (RecipeError("recipe key 'train.lr' must be > 0"), "recipe key 'train.lr' must be > 0"),
        (FileNotFoundError(2, "No such file or directory", "rows.jsonl"), "No such file or directory: 'rows.jsonl'"),
        (ValueError("inside torch: shapes do not match"), None),  # a bug (or torch's), not the user's: traceback
        (OSError(28, "No space left on device"), None),  # names no file: says nothing the user can act on
        (RuntimeError("CUDA error"), None),
    ],
)
def test_only_bico_errors_and_file_errors_are_one_line(error, shown, monkeypatch, capsys):
    import bico.cli.train

    def fail(args):
        raise error

    monkeypatch.delenv("BICO_DEBUG", raising=False)
    monkeypatch.setattr(bico.cli.train, "run", fail)
    if shown is None:
        with pytest.raises(type(error)):
            main(["train", "recipe.yaml"])
        assert capsys.readouterr().err == ""
    else:
        code, _, err = run(capsys, "train", "recipe.yaml")
        one_line_error(code, err, shown)
