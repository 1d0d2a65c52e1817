"""`bico eval --suite lm-eval`: EleutherAI's harness on a trained run's model beside its base, offline.

The task is a local YAML task on a local JSONL file (the harness's ``json`` dataset builder), so
nothing comes from a hub. The harness's ``acc`` is checked against bico's own log-likelihoods: a
multiple-choice answer is right when its continuation has the highest summed log p.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is in the test extra: pip install -e '.[test]'")

from bico.cli import main
from helpers import TINY_MODEL

# The harness puts its target_delimiter (" ") between the prompt and each choice.
QUESTIONS = [
    ("What is the capital of France?", ["Paris", "Rome", "Oslo"], 0),
    ("How many legs has a cat?", ["two", "four", "six"], 1),
    ("What colour is the sky on a clear day?", ["green", "red", "blue"], 2),
    ("Which of these is a fruit?", ["an apple", "a chair", "a stone"], 0),
    ("What do bees make?", ["milk", "honey", "silk"], 1),
    ("Which animal barks?", ["a dog", "a fish", "a snail"], 0),
]
TASK = "bico_tiny_mc"
SMALL = [
    *TINY_MODEL,
    "train.progress=false",
    "train.max_steps=3",
    "eval.enabled=false",
    "train.lr=1e-2",
]


def local_task(folder: Path) -> Path:
    """A multiple-choice task in the harness's YAML format on a JSONL file beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    (folder / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    return folder


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, reversal_dir):
    from bico.config import load_recipe
    from bico.tools.pipeline import train_and_evaluate

    out = tmp_path_factory.mktemp("run")
    repo = Path(__file__).resolve().parent.parent
    train_and_evaluate(
        load_recipe(
            str(repo / "recipes" / "demo" / "tiny.yaml"),
            SMALL + [f"train.output_dir={out}", f"data.dir={reversal_dir}"],
        )
    )
    assert (out / "model").is_dir() and (out / "recipe.json").is_file()
    return out


def bico_accuracy(model_path: str | None, recipe_model: dict | None = None) -> float:
    """The task's acc computed with bico's own scorer: argmax over choices of summed log p(" " + choice | prompt)."""
    from bico.config import ModelConfig
    from bico.evaluation.reversal import completion_logprobs
    from bico.models import load_model

    cfg = (
        ModelConfig(**{**recipe_model, "attn_implementation": "sdpa"})
        if recipe_model
        else ModelConfig(name=model_path, attn_implementation="sdpa")
    )
    model, tokenizer = load_model(cfg)
    model.eval()
    right = 0
    for question, choices, answer in QUESTIONS:
        prompt = f"Question: {question}\nAnswer:"
        scores = completion_logprobs(model, tokenizer, [prompt] * len(choices), [" " + c for c in choices])
        right += max(range(len(choices)), key=scores.__getitem__) == answer
    return right / len(QUESTIONS)


def test_a_run_and_its_base_side_by_side_on_a_local_task(trained_run, tmp_path, capsys):
    from bico.evaluation.lm_harness import base_model_of

    tasks = local_task(tmp_path / "tasks")
    code = main(
        [
            "eval",
            "--suite",
            "lm-eval",
            "--model",
            str(trained_run / "model"),
            "--tasks",
            TASK,
            "--include-path",
            str(tasks),
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    shown = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "r" / "lm_eval.json").read_text())
    assert list(report["runs"]) == ["base", "model"] and report["settings"]["models"]["base"] == "tiny-random"
    for run in report["runs"].values():
        scores = run["tasks"][TASK]
        assert scores["n"] == len(QUESTIONS) and scores["n_shot"] == 0 and set(scores["metrics"]) == {"acc", "acc_norm"}
        acc = scores["metrics"]["acc"]
        assert acc["stderr"] is not None and acc["ci95"][0] <= acc["value"] <= acc["ci95"][1]
    # what the harness measured is what bico's own log-likelihoods say, for both models
    base_acc = bico_accuracy(None, base_model_of(str(trained_run / "model")))
    assert report["runs"]["base"]["tasks"][TASK]["metrics"]["acc"]["value"] == pytest.approx(base_acc)
    assert report["runs"]["model"]["tasks"][TASK]["metrics"]["acc"]["value"] == pytest.approx(
        bico_accuracy(str(trained_run / "model"))
    )
    table = (tmp_path / "r" / "lm_eval.md").read_text()
    assert shown == table and "| task | metric | n | base | model | Δ model |" in table
    assert f"| {TASK} | acc | {len(QUESTIONS)} |" in table


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--tasks", "bico_tiny_mx"], "unknown lm-eval task 'bico_tiny_mx' (did you mean 'bico_tiny_mc'?)"),
        ([], "--tasks is required"),
        (["--tasks", TASK, "--num-fewshot", "-1"], "--num-fewshot must be >= 0"),
        (
            ["--tasks", TASK, "--include-path", "/nonexistent/tasks"],
            "--include-path /nonexistent/tasks: no such folder",
        ),
    ],
)
def test_bad_lm_eval_input_is_one_line_exit_2(argv, words, tmp_path, capsys):
    tasks = local_task(tmp_path / "tasks")
    if "--include-path" not in argv:
        argv = argv + ["--include-path", str(tasks)]
    code = main(["eval", "--suite", "lm-eval", "--model", "tiny-random", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "r").exists()


def test_lm_eval_options_belong_to_the_lm_eval_suite(tmp_path, capsys):
    code = main(["eval", "--model", "tiny-random", "--tasks", "arc_easy", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--tasks is for --suite lm-eval" in err[0]


def test_without_lm_eval_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    code = main(["eval", "--suite", "lm-eval", "--model", "tiny-random", "--tasks", "arc_easy", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        (
            "bico: error: bico eval --suite lm-eval needs lm-eval (EleutherAI's "
            "lm-evaluation-harness): pip install 'bico[lm-eval]'"
        )
    ]


def test_a_bad_lm_eval_command_loads_no_torch(tmp_path):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bico", "eval", "--suite", "lm-eval", "--model", "tiny-random"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert done.returncode == 2 and errors == [
        ("bico: error: bico eval --suite lm-eval: --tasks is required (e.g. --tasks arc_easy hellaswag)")
    ], done.stderr
    assert "torch" not in imported


def test_the_benchmarks_the_readme_names_are_in_the_harness_registry():
    # Their data comes from the hub (not reachable here): only their names are checked offline.
    from bico.evaluation.lm_harness import HarnessError, check_tasks, task_manager

    manager = task_manager()
    check_tasks(manager, ["mmlu", "arc_easy", "arc_challenge", "hellaswag"])
    with pytest.raises(HarnessError, match=r"unknown lm-eval task 'arc_esay' \(did you mean 'arc_easy'"):
        check_tasks(manager, ["arc_esay"])
