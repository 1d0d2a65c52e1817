"""Bad input: one line on stderr, exit status 2, no traceback, nothing written or left behind.

Every case runs ``bico train`` (in this process, as the command line does) on the tiny recipe and
asserts: exit 2, stderr is exactly one ``bico: error: ...`` line containing the expected words,
and the output dir either does not exist afterwards or (when the case made it first) holds
exactly what it held before. A few cases also run as real processes (``python -m bico``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bico.cli import main
from helpers import TINY_MODEL

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "recipes" / "demo" / "tiny.yaml")
SMALL = [
    *TINY_MODEL,
    "train.progress=false",
    "train.max_steps=2",
    "eval.limit=2",
    "eval.max_new_tokens=4",
]


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _bad_data(tmp, reversal_dir, content: bytes) -> list[str]:
    folder = tmp / "data"
    folder.mkdir()
    for f in reversal_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "p2d_prompts_train.jsonl").write_bytes(content)
    return [f"data.dir={folder}"]


def _model_folder(tmp, *, config: str | None, tokenizer: bool) -> list[str]:
    folder = tmp / "model_in"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config)
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return [f"model.name={folder}"]


GOOD_ROW = '{"prompt": "Q", "completion": " A"}\n'


def _mismatched_tokenizer(tmp) -> list[str]:
    """A model folder whose tokenizer has more tokens than the model has embedding rows (no weights:
    the check comes before they would load)."""
    from bico.models import load_tokenizer

    folder = _write(tmp / "mismatched" / "config.json", '{"model_type": "llama", "vocab_size": 100}').parent
    load_tokenizer("tiny-random").save_pretrained(folder)
    return [f"model.name={folder}"]


def _files(tmp, name: str, content, *extra: str) -> list[str]:
    return [f"data.files=[{_write(tmp / 'in' / name, content)}]", f"data.cache_dir={tmp / 'cache'}", *extra]


# (id, extra arguments or a function (tmp, reversal_dir, out) -> arguments, words the error line contains)
CASES = [
    ("batch_size=0", ["train.batch_size=0"], ["train.batch_size", ">= 1"]),
    ("batch_size=1.5", ["train.batch_size=1.5"], ["train.batch_size", "whole number"]),
    ("epochs=-1", ["train.max_steps=null", "train.epochs=-1"], ["train.epochs", "> 0"]),
    ("epochs=0", ["train.max_steps=null", "train.epochs=0"], ["train.epochs", "> 0"]),
    ("epochs=nan", ["train.epochs=nan"], ["train.epochs", "finite"]),
    ("max_steps=0", ["train.max_steps=0"], ["train.max_steps", ">= 1"]),
    ("lr=0", ["train.lr=0"], ["train.lr", "> 0"]),
    ("lr=-1e-3", ["train.lr=-1e-3"], ["train.lr", "> 0"]),
    ("lr=abc", ["train.lr=abc"], ["train.lr", "must be a number"]),
    ("grad_accum=0", ["train.grad_accum=0"], ["train.grad_accum"]),
    ("warmup_steps=-1", ["train.warmup_steps=-1"], ["train.warmup_steps", ">= 0"]),
    ("weight_decay<0", ["train.weight_decay=-0.1"], ["train.weight_decay"]),
    ("max_grad_norm<0", ["train.max_grad_norm=-1"], ["train.max_grad_norm"]),
    ("betas", ["train.betas=[1.5,0.9]"], ["train.betas", "[0, 1)"]),
    ("seed<0", ["train.seed=-1"], ["train.seed"]),
    ("log_every=0", ["train.log_every=0"], ["train.log_every"]),
    ("save_every=0", ["train.save_every=0"], ["train.save_every"]),
    ("keep_checkpoints<0", ["train.keep_checkpoints=-1"], ["train.keep_checkpoints"]),
    ("resume=maybe", ["train.resume=maybe"], ["train.resume", "true or false"]),
    ("resume+overwrite", ["train.resume=true", "train.overwrite=true"], ["set one of them"]),
    ("device=gpu", ["train.device=gpu"], ["train.device"]),
    ("schedule", ["train.schedule=step"], ["train.schedule"]),
    ("precision=fp16 on CPU", ["train.device=cpu", "train.precision=fp16"], ["fp16", "GPU", "fp32 or bf16"]),
    ("deepspeed config missing", ["train.deepspeed=missing.json"], ["missing.json", "no such file"]),
    ("max_length=0", ["data.max_length=0"], ["data.max_length"]),
    ("train_files=[]", ["data.train_files=[]"], ["data.train_files"]),
    ("layers=0", ["model.layers=0"], ["model.layers"]),
    ("heads not dividing width", ["model.heads=3"], ["model.heads"]),
    ("dtype", ["model.dtype=float8"], ["model.dtype"]),
    ("finetune.method", ["finetune.method=qlora"], ["finetune.method"]),
    ("lora_r=0", ["finetune.method=lora", "finetune.lora_r=0"], ["finetune.lora_r"]),
    ("lora_dropout=1.5", ["finetune.method=lora", "finetune.lora_dropout=1.5"], ["finetune.lora_dropout"]),
    ("eval.max_new_tokens=0", ["eval.max_new_tokens=0"], ["eval.max_new_tokens"]),
    ("eval.batch_size=0", ["eval.batch_size=0"], ["eval.batch_size"]),
    ("eval.limit=0", ["eval.limit=0"], ["eval.limit"]),
    ("eval split unknown", ["eval.splits=[nope]"], ["unknown evaluation split 'nope'"]),
    ("eval split file missing", ["eval.splits=[gone.jsonl]"], ["eval.splits", "gone.jsonl"]),
    ("mask_ratio=1.5", ["objective.name=bico", "objective.options.mask_ratio=1.5"], ["mask_ratio", "[0, 1]"]),
    # Passes the recipe check, refused by the objective after the model is loaded: nothing left behind.
    ("mask_ratio=1 (objective)", ["objective.name=bico", "objective.options.mask_ratio=1"], ["bico.mask_ratio"]),
    ("unknown objective", ["objective.name=mystery"], ["unknown objective 'mystery'"]),
    ("unknown option", ["objective.name=bico", "objective.options.ratio=0.2"], ["has no option(s) ratio"]),
    ("unknown key", ["train.lrate=1"], ["unknown recipe key 'train.lrate'"]),
    ("not key=value", ["train.lr"], ["not key=value"]),
    ("tokenizer=words on a folder", ["model.tokenizer=words", "model.name=smollm2-135m"], ["model.tokenizer=words"]),
    ("model folder missing", lambda tmp, data, out: [f"model.name={tmp / 'nomodel'}"], ["neither a preset"]),
    (
        "model config.json broken",
        lambda tmp, data, out: _model_folder(tmp, config='{"model_type": "llama", ', tokenizer=True),
        ["config.json", "not valid JSON"],
    ),
    (
        "model without tokenizer",
        lambda tmp, data, out: _model_folder(tmp, config='{"model_type": "llama"}', tokenizer=False),
        ["no tokenizer files"],
    ),
    ("data dir missing", lambda tmp, data, out: [f"data.dir={tmp / 'nowhere'}"], ["does not exist"]),
    (
        "data not UTF-8",
        lambda tmp, data, out: _bad_data(tmp, data, GOOD_ROW.encode() + b'{"prompt": "\xff"}\n'),
        ["p2d_prompts_train.jsonl, line 2", "not UTF-8"],
    ),
    (
        "data malformed JSON",
        lambda tmp, data, out: _bad_data(tmp, data, (GOOD_ROW + "{oops\n").encode()),
        ["p2d_prompts_train.jsonl, line 2", "malformed JSON"],
    ),
    (
        "data missing field",
        lambda tmp, data, out: _bad_data(tmp, data, (GOOD_ROW + '{"prompt": "c"}\n').encode()),
        ["line 2", "completion"],
    ),
    ("data empty", lambda tmp, data, out: _bad_data(tmp, data, b""), ["empty file"]),
    (
        "data train file is a folder",
        lambda tmp, data, out: [f"data.dir={data}", "data.train_files=[.]"],
        ["is a directory"],
    ),
    ("row too long", ["data.max_length=8"], ["p2d_prompts_train.jsonl, line 1", "data.max_length=8"]),
    # data.files (read through `datasets`): the file and its row or line, one line
    ("data.format unknown", ["data.format=tsv"], ["data.format", "prompt_completion, text, chat"]),
    ("text format without files", ["data.format=text"], ["data.format=text", "data.files"]),
    (
        "data.fields unknown",
        lambda tmp, data, out: _files(tmp, "a.jsonl", GOOD_ROW, "data.fields.body=x"),
        ["data.fields.body", "prompt, completion"],
    ),
    ("chunk_overlap too big", ["data.chunk_overlap=62"], ["data.chunk_overlap", "data.max_length"]),
    ("chat_loss unknown", ["data.chat_loss=user"], ["data.chat_loss"]),
    (
        "data file missing",
        lambda tmp, data, out: [f"data.files=[{tmp / 'gone.csv'}]"],
        ["data file not found", "gone.csv"],
    ),
    ("data file type", lambda tmp, data, out: _files(tmp, "a.xml", "<a/>"), ["a.xml", "unsupported file type .xml"]),
    (
        "folder not saved by datasets",
        lambda tmp, data, out: [f"data.files=[{data}]"],
        ["is a directory", "save_to_disk"],
    ),
    (
        "csv column missing",
        lambda tmp, data, out: _files(tmp, "a.csv", "question,completion\nq,a\n"),
        ["a.csv", "no column 'prompt'", "data.fields.prompt"],
    ),
    (
        "csv value missing",
        lambda tmp, data, out: _files(tmp, "a.csv", "prompt,completion\nq,a\nq2,\n"),
        ["a.csv, row 2", "'completion' is missing"],
    ),
    (
        "jsonl via data.files: malformed",
        lambda tmp, data, out: _files(tmp, "a.jsonl", GOOD_ROW + "\n{oops\n"),
        ["a.jsonl, line 3", "malformed JSON"],
    ),
    (
        "renamed field missing",
        lambda tmp, data, out: _files(
            tmp, "a.jsonl", '{"q": "Q", "completion": "A"}\n{"completion": "B"}\n', "data.fields.prompt=q"
        ),
        ["a.jsonl, line 2", "missing field 'q'"],
    ),
    (".txt as prompt_completion", lambda tmp, data, out: _files(tmp, "a.txt", "words"), ["a.txt", "data.format=text"]),
    (
        "text not UTF-8",
        lambda tmp, data, out: _files(tmp, "a.txt", b"ok \xff", "data.format=text"),
        ["a.txt", "not UTF-8"],
    ),
    (
        "chat messages malformed",
        lambda tmp, data, out: _files(
            tmp,
            "c.jsonl",
            '{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": "hi"}\n',
            "data.format=chat",
        ),
        ["c.jsonl, line 2", "'messages'"],
    ),
    (
        "chat without assistant",
        lambda tmp, data, out: _files(
            tmp, "c.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n', "data.format=chat"
        ),
        ["c.jsonl, line 1", "no assistant message", "data.chat_loss=all"],
    ),
    (
        "chat turn, empty content",
        lambda tmp, data, out: _files(
            tmp,
            "c.jsonl",
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}\n',
            "data.format=chat",
        ),
        ["c.jsonl, line 1", "message 2 has an empty 'content'"],
    ),
    (
        "chat turn, empty role",
        lambda tmp, data, out: _files(
            tmp,
            "c.jsonl",
            '{"messages": [{"role": "", "content": "hi"}, {"role": "assistant", "content": "ok"}]}\n',
            "data.format=chat",
        ),
        ["c.jsonl, line 1", "message 1 has an empty 'role'"],
    ),
    (
        "tokenizer not the model's",
        lambda tmp, data, out: _mismatched_tokenizer(tmp),
        ["mismatched", "tokenizer has 49152 tokens", "embeddings have 100 rows"],
    ),
    (
        "chat row too long",
        lambda tmp, data, out: _files(
            tmp,
            "c.jsonl",
            json.dumps({"messages": [{"role": "user", "content": "hi " * 40}, {"role": "assistant", "content": "ok"}]})
            + "\n",
            "data.format=chat",
        ),
        ["c.jsonl, line 1", "data.max_length=64"],
    ),
    (
        "output_dir is a file",
        lambda tmp, data, out: [f"train.output_dir={_write(tmp / 'afile', 'x')}"],
        ["train.output_dir", "is a file"],
    ),
    ("output_dir not writable", ["train.output_dir=/proc/bico-test/run"], ["train.output_dir", "/proc/bico-test/run"]),
    ("resume, no run", ["train.resume=true"], ["train.resume=true", "does not exist"]),
    (
        "resume, no checkpoint",
        lambda tmp, data, out: [f"train.output_dir={_write(out / 'recipe.json', '{}').parent}", "train.resume=true"],
        ["no checkpoint"],
    ),
    (
        "output_dir holds other files",
        lambda tmp, data, out: [f"train.output_dir={_write(out / 'notes.txt', 'x').parent}"],
        ["not a bico run folder", "notes.txt"],
    ),
    (
        "overwrite keeps other files",
        lambda tmp, data, out: [f"train.output_dir={_write(out / 'notes.txt', 'x').parent}", "train.overwrite=true"],
        ["not a bico run folder"],
    ),
]


def _snapshot(folder: Path) -> dict | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tmp_path, reversal_dir, capsys, tokenizer):
    _, extra, words = case
    out = tmp_path / "out"
    if callable(extra):
        extra = extra(tmp_path, reversal_dir, out)
    before = _snapshot(out)
    code = main(["train", TINY, f"data.dir={reversal_dir}", f"train.output_dir={out}", *SMALL, *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bico: error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert _snapshot(out) == before  # no output dir created, nothing half-written into one that existed


def test_empty_and_unusable_recipe_files(tmp_path, capsys):
    for name, text, words in [
        ("empty.yaml", "", "is empty"),
        ("comment.yaml", "# nothing\n", "is empty"),
        ("list.yaml", "- a\n", "mapping of sections"),
        ("bad.yaml", "a: [\n", "not valid YAML"),
        ("binary.yaml", b"\xff\xfe", "UTF-8"),
        (
            "twice.yaml",
            "train:\n  lr: 0.1\neval:\n  limit: 2\ntrain:\n  seed: 3\n",
            "line 5: the key 'train' appears twice",
        ),
    ]:
        path = _write(tmp_path / name, text)
        code = main(["train", str(path), f"train.output_dir={tmp_path / 'out'}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], (name, err)
    code = main(["train", str(tmp_path / "missing.yaml")])
    assert code == 2 and "recipe file not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    """The whole command (imports included) as a user runs it; a bad recipe fails before torch loads."""
    empty = _write(tmp_path / "empty.yaml", "")
    for argv in [["train", TINY, "train.batch_size=0"], ["train", str(empty)], ["train", TINY, "train.epochs=-1"]]:
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "bico", *argv, f"train.output_dir={tmp_path / 'out'}"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=600,
        )
        errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
        assert done.returncode == 2 and len(errors) == 1 and errors[0].startswith("bico: error: "), done.stderr
        assert "torch" not in _imported(done.stderr)
    assert not (tmp_path / "out").exists()


def test_data_check_goes_on_past_bad_files(tmp_path, capsys, reversal_dir):
    good = reversal_dir / "p2d_prompts_test.jsonl"
    binary = _write(tmp_path / "binary.jsonl", GOOD_ROW.encode() + b"\x80\n")
    code = main(["data", "check", str(binary), str(tmp_path), str(tmp_path / "missing.jsonl"), str(good)])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"ok {good}" in out  # checked although three bad ones came first
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert "binary.jsonl, line 2" in lines[0] and "not UTF-8" in lines[0]
    assert f"{tmp_path} is a directory" in lines[1]
    assert "not found" in lines[2]


def _imported(importtime_log: str) -> set[str]:
    """The modules ``python -X importtime`` reports."""
    return {line.split("|")[-1].strip() for line in importtime_log.splitlines() if line.startswith("import time:")}


def test_help_imports_no_torch():
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bico", "--help"], capture_output=True, text=True, timeout=600
    )
    modules = _imported(done.stderr)
    assert done.returncode == 0 and "usage: bico" in done.stdout
    assert "bico.cli" in modules and not {"torch", "transformers", "deepspeed"} & modules


def test_ctrl_c_inside_exec_still_exits_130(tmp_path):
    """A KeyboardInterrupt that starts inside exec'd code (dataclasses does that during torch's and
    datasets' imports) makes CPython kill a ``python -m`` process with SIGINT at exit, even though
    bico caught it; CI saw status -2 that way. The probe raises it there deterministically."""
    (tmp_path / "interrupt_probe.py").write_text(
        "import argparse, sys\n"
        "from bico import cli\n"
        "args = argparse.Namespace(verbose=False, handler=lambda a: exec('raise KeyboardInterrupt'))\n"
        "cli.build_parser = lambda: argparse.Namespace(parse_args=lambda argv: args)\n"
        "sys.exit(cli.main([]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    env.pop("BICO_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "interrupt_probe"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert (done.returncode, done.stderr.strip()) == (130, "bico: interrupted")


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_ctrl_c_during_start_up_is_one_line_exit_130(tmp_path, reversal_dir):
    import signal
    import time

    for delay in (1.0, 2.0):  # while torch loads (about 3 s on the 2-core CI machine), or the model
        out = tmp_path / f"out{delay}"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bico",
                "train",
                TINY,
                f"data.dir={reversal_dir}",
                f"train.output_dir={out}",
                *SMALL,
            ],
            stderr=subprocess.PIPE,
            text=True,
            # Ctrl-C as at a terminal: a background job (a CI runner's) starts with SIGINT ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
        if proc.returncode == 0:  # finished before the signal (a very fast machine): nothing to check
            continue
        # Nothing left behind, unless (a fast machine) training had begun: then it stops with a checkpoint.
        training = out.exists()
        assert not training or (out / "recipe.json").is_file()
        assert proc.returncode == 130 and (
            err.strip() == "bico: interrupted"
            or training
            and err.strip().startswith("bico: stopped by SIGINT after step")
        ), err


class _RunsCode:
    """Unpickling this runs a shell command (what a crafted checkpoint would do)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_resume_refuses_a_checkpoint_whose_pickle_runs_code(tmp_path, reversal_dir, capsys):
    import torch

    out, marker = tmp_path / "out", tmp_path / "marker"
    args = [
        "train",
        TINY,
        f"data.dir={reversal_dir}",
        f"train.output_dir={out}",
        *SMALL,
        "train.save_every=1",
        "train.save_model=false",
        "eval.enabled=false",
    ]
    assert main(args) == 0
    capsys.readouterr()
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    torch.save({"step": _RunsCode(f"touch {marker}")}, newest / "state.pt")
    from bico.training.checkpoints import write_checksums

    write_checksums(newest)  # whoever crafts the file can write its checksum too: the load itself refuses
    code = main(args + ["train.resume=true", "train.max_steps=3"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bico: error: "), lines
    assert "state.pt" in lines[0] and "posix.system" in lines[0] and "could run code" in lines[0], lines[0]
    assert not marker.exists()


def _resume_args(tmp, reversal_dir, *extra):
    out = tmp / "out"
    return out, [
        "train",
        TINY,
        f"data.dir={reversal_dir}",
        f"train.output_dir={out}",
        *SMALL,
        "train.save_every=1",
        "train.save_model=false",
        "eval.enabled=false",
        *extra,
    ]


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bico: error: "), lines
    return lines[0]


def test_resume_refuses_training_data_changed_since_the_checkpoint(tmp_path, reversal_dir, capsys):
    import os

    data = _write(tmp_path / "qa.jsonl", GOOD_ROW * 4)
    out, args = _resume_args(tmp_path, reversal_dir, f"data.files=[{data}]", f"data.cache_dir={tmp_path / 'cache'}")
    assert main(args) == 0
    capsys.readouterr()
    st = os.stat(data)  # a same-size edit with the old mtime put back: only the bytes tell
    data.write_text(GOOD_ROW.replace("Q", "R") * 4)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = _snapshot(out)
    assert main(args + ["train.resume=true", "train.max_steps=3"]) == 2
    assert "training data changed" in _one_error_line(capsys)
    assert _snapshot(out) == before


@pytest.fixture(scope="module")
def three_checkpointed_steps(tmp_path_factory, reversal_dir):
    """A run of 3 steps keeping the checkpoints of steps 2 and 3; each test damages a copy."""
    out, args = _resume_args(tmp_path_factory.mktemp("run"), reversal_dir, "train.max_steps=3")
    assert main(args) == 0
    return out


def _damage(state: Path, how: str) -> None:
    import torch

    data = state.read_bytes()
    middle = len(data) // 2
    if how in ("zeroed", "0x7f"):  # tensor bytes, the file's size unchanged
        state.write_bytes(data[:middle] + (b"\0" if how == "zeroed" else b"\x7f") * 64 + data[middle + 64 :])
    elif how == "truncated":
        state.write_bytes(data[:middle])
    elif how == "{}":
        torch.save({}, state)
    else:
        state.write_bytes(b"not a checkpoint\n")


@pytest.mark.parametrize("how", ["zeroed", "0x7f", "truncated", "{}", "foreign"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(
    three_checkpointed_steps, tmp_path, reversal_dir, how, caplog, capsys
):
    import logging
    import shutil

    out, args = _resume_args(tmp_path, reversal_dir)
    shutil.copytree(three_checkpointed_steps, out)
    _damage(out / "checkpoints" / "step-0000003" / "state.pt", how)
    with caplog.at_level(logging.WARNING, logger="bico.training.rundir"):
        assert main(args + ["train.resume=true", "train.max_steps=4"]) == 0, capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "step-0000003/state.pt" in warnings[0], warnings
    assert "resuming from step-0000002" in warnings[0]
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # the log cut back to step 2, then steps 3 and 4


def test_resume_with_no_intact_checkpoint_names_the_file(three_checkpointed_steps, tmp_path, reversal_dir, capsys):
    import shutil

    out, args = _resume_args(tmp_path, reversal_dir)
    shutil.copytree(three_checkpointed_steps, out)
    for step in (2, 3):
        _damage(out / "checkpoints" / f"step-000000{step}" / "state.pt", "zeroed")
    before = _snapshot(out)
    assert main(args + ["train.resume=true", "train.max_steps=4"]) == 2
    line = _one_error_line(capsys)
    assert "no checkpoint is intact" in line and "step-0000003/state.pt" in line and "train.overwrite=true" in line
    assert _snapshot(out) == before
    (out / "train_summary.json").unlink()  # killed before finishing
    assert main(args + ["train.resume=true", "train.max_steps=4"]) == 2
    assert "no checkpoint in" in (line := _one_error_line(capsys)) and "is intact" in line and "step-0000003" in line
    # a checkpoint without checksums (an older bico's) whose state is not bico's: one line naming it
    for step in (2, 3):
        (out / "checkpoints" / f"step-000000{step}" / "checksums.json").unlink()
    _damage(out / "checkpoints" / "step-0000003" / "state.pt", "{}")
    assert main(args + ["train.resume=true", "train.max_steps=4"]) == 2
    assert "step-0000003/state.pt is damaged or not a bico checkpoint" in _one_error_line(capsys)


def test_data_reversal_does_not_replace_files_without_force(tmp_path, capsys):
    mine = _write(tmp_path / "all_prompts_train.jsonl", GOOD_ROW)
    other = _write(tmp_path / "notes.txt", "mine")
    args = [
        "data",
        "reversal",
        "--out",
        str(tmp_path),
        "--facts",
        "2",
        "--train-paraphrases",
        "2",
        "--test-paraphrases",
        "2",
    ]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "all_prompts_train.jsonl" in line and "--force" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all_prompts_train.jsonl", "notes.txt"]
    assert mine.read_text() == GOOD_ROW
    assert main(args + ["--force"]) == 0 and mine.read_text() != GOOD_ROW and other.read_text() == "mine"


def test_tilde_in_a_path_key_is_the_home_folder(tmp_path, reversal_dir, monkeypatch, capsys):
    from bico.config import load_recipe

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(_write(tmp_path / "cwd" / "x", "").parent)
    home = tmp_path / "home"
    r = load_recipe(None, ["data.files=[~/a.jsonl]", "data.dir=~/d", "data.cache_dir=~/c", "eval.splits=[~/s.jsonl]"])
    assert (r.data.files, r.data.dir, r.data.cache_dir, r.eval.splits) == (
        [str(home / "a.jsonl")],
        str(home / "d"),
        str(home / "c"),
        [str(home / "s.jsonl")],
    )
    args = [
        "train",
        TINY,
        f"data.dir={reversal_dir}",
        "train.output_dir=~/run",
        *SMALL,
        "train.save_model=false",
        "eval.enabled=false",
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert (home / "run" / "train_summary.json").is_file() and not (tmp_path / "cwd" / "~").exists()
