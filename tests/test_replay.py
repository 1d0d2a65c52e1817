"""Replay (bico/training/replay.py): next-token rows of general text beside the objective."""

import json
from pathlib import Path

import pytest
import torch

from bico.cli import main
from bico.config import RecipeError, load_recipe
from bico.training.replay import (
    Contamination,
    _self_key,
    load_replay,
    read_prompts,
    replay_batch,
    sample_from_model,
    start_token,
)
from helpers import TINY_MODEL

TINY = str(Path(__file__).resolve().parent.parent / "recipes" / "demo" / "tiny.yaml")

SMALL = [
    *TINY_MODEL,
    "train.progress=false",
    "eval.enabled=false",
    "train.log_every=1",
]


def _replay_file(tmp_path):
    path = tmp_path / "replay.txt"
    path.write_text(
        "The river runs past the old mill and into the valley below.\n\n"
        "Bread is made of flour, water, salt and yeast, and baked in an oven.\n"
    )
    return path


def _metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_contamination_drops_retention_text_only():
    check = Contamination()
    assert check("Some text. The capital of France is Paris, everyone knows.")
    assert not check("The capital of Francesca's novel is a small village.")  # not the prompt's words
    prose = (Contamination.__init__.__globals__["RETENTION_DIR"] / "prose.txt").read_text().split()
    assert check("Intro: " + " ".join(prose[100 : 100 + 8]) + " and so on")
    assert not check("Bread is made of flour, water, salt and yeast.")


@pytest.mark.parametrize(
    "override, words",
    [
        ("replay.rows=-1", ["replay.rows", ">= 0"]),
        ("replay.top_p=0", ["replay.top_p", "(0, 1]"]),
        ("replay.source=/nonexistent/replay.txt", ["replay.source", "no such file"]),
        ("replay.source=notes.md", ["replay.source", ".txt or .jsonl"]),
        ("replay.prompts=/nonexistent/openings.txt", ["replay.prompts", "no such .txt file"]),
    ],
)
def test_bad_replay_settings_are_one_line(override, words, tmp_path, capsys, reversal_dir):
    out = tmp_path / "out"
    rows = [] if "rows" in override else ["replay.rows=2"]
    code = main(["train", TINY, f"data.dir={reversal_dir}", f"train.output_dir={out}", *SMALL, *rows, override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("bico: error: "), err
    assert all(w in err[0] for w in words), err[0]
    assert not out.exists()


def test_replay_with_deepspeed_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="deepspeed"):
        load_recipe(TINY, ["replay.rows=2", "train.deepspeed=recipes/deepspeed/zero2.json"])


def test_replay_rows_are_seeded_and_causal(tokenizer, tmp_path):
    recipe = load_recipe(TINY, ["replay.rows=3", f"replay.source={_replay_file(tmp_path)}", "replay.length=6"])
    examples = load_replay(recipe, tokenizer)
    assert all(e.prompt_ids == [start_token(tokenizer)] and len(e.completion_ids) <= 6 for e in examples)
    a = replay_batch(examples, 3, seed=0, step=5, micro=1, pad_id=tokenizer.pad_token_id, pack=False)
    b = replay_batch(examples, 3, seed=0, step=5, micro=1, pad_id=tokenizer.pad_token_id, pack=False)
    c = replay_batch(examples, 3, seed=0, step=6, micro=1, pad_id=tokenizer.pad_token_id, pack=False)
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["input_ids"], c["input_ids"])
    # every real token after the first of each row is a target, as in plain next-token prediction
    assert a["num_targets"] == a["num_tokens"] - 3
    dense, t = a["bico_mask"].dense(), a["input_ids"].shape[1]
    assert not dense[:, torch.triu(torch.ones(t, t, dtype=torch.bool), 1)].any()  # nothing sees the future
    assert dense[:, torch.arange(t), torch.arange(t)][a["input_ids"] != tokenizer.pad_token_id].all()


def test_training_with_replay_reports_both_losses(tmp_path, reversal_dir):
    base = [f"data.dir={reversal_dir}", *SMALL, "train.max_steps=3"]
    plain, with_replay = tmp_path / "plain", tmp_path / "replay"
    assert main(["train", TINY, *base, f"train.output_dir={plain}"]) == 0
    assert (
        main(
            [
                "train",
                TINY,
                *base,
                f"train.output_dir={with_replay}",
                "replay.rows=2",
                f"replay.source={_replay_file(tmp_path)}",
            ]
        )
        == 0
    )
    p, r = _metrics(plain), _metrics(with_replay)
    assert "replay_loss" not in p[0] and r[0]["replay_loss"] > 0
    # step 1's objective loss is computed before any update: replay does not change it ...
    assert r[0]["loss"] == pytest.approx(p[0]["loss"], abs=1e-6)
    # ... and it changes the update, so step 2's loss differs
    assert r[1]["loss"] != pytest.approx(p[1]["loss"], abs=1e-7)
    assert r[0]["tokens"] > p[0]["tokens"]  # replay tokens cost compute and are counted


def test_self_samples_are_cached(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("BICO_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe(TINY, [*SMALL, "replay.rows=1", "replay.samples=3", "replay.length=4"])
    first = load_replay(recipe, tokenizer)
    assert 1 <= len(first) <= 3 and all(len(e.completion_ids) <= 4 for e in first)
    import bico.models

    monkeypatch.setattr(bico.models, "load_model", lambda *a, **k: pytest.fail("sampled again"))
    again = load_replay(recipe, tokenizer)
    assert [e.completion_ids for e in again] == [e.completion_ids for e in first]


def test_sampling_is_seeded(tokenizer):
    from helpers import make_llama

    model = make_llama(vocab=len(tokenizer))
    kw = dict(samples=2, length=5, temperature=1.0, top_p=1.0)
    a = sample_from_model(model, tokenizer, seed=0, **kw)
    assert a == sample_from_model(model, tokenizer, seed=0, **kw)
    assert a != sample_from_model(model, tokenizer, seed=1, **kw)
    assert all(s[0] == start_token(tokenizer) for s in a)


def test_kl_to_base_is_zero_at_the_base_and_positive_elsewhere():
    from bico.training.replay import kl_to_base

    torch.manual_seed(0)
    logits = torch.randn(5, 50, dtype=torch.float64)
    logp = torch.log_softmax(logits, -1)
    values, ids = logp.topk(50, -1)  # k = V: the full KL
    assert kl_to_base(logits, ids, values).abs() < 1e-5  # computed in fp32, as in training
    other = logits + torch.randn_like(logits)
    full = (logp.exp() * (logp - torch.log_softmax(other, -1))).sum()
    assert torch.allclose(kl_to_base(other, ids, values).double(), full, rtol=1e-5)
    v8, i8 = logp.topk(8, -1)
    coarse = kl_to_base(other, i8, v8)
    assert 0 < coarse < full  # a KL of coarsened distributions: positive, below the full one
    assert kl_to_base(logits, i8, v8).abs() < 1e-5
    # moving all the rest of the mass onto the top-k is not a free lunch
    sharpened = torch.full_like(logits, -1e4).scatter(-1, i8, v8)
    assert kl_to_base(sharpened, i8, v8) > 0.1


def test_training_with_kl_replay_starts_at_zero(tmp_path, reversal_dir, monkeypatch):
    """At step 1 the model is the base: its KL to the base on the replay rows is 0 (up to fp16
    rounding of the cached log-probabilities), and training moves it away from 0."""
    monkeypatch.setenv("BICO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "kl"
    assert (
        main(
            [
                "train",
                TINY,
                f"data.dir={reversal_dir}",
                *SMALL,
                "train.max_steps=3",
                f"train.output_dir={out}",
                "replay.rows=2",
                f"replay.source={_replay_file(tmp_path)}",
                "replay.loss=kl",
                "replay.top_k=16",
                "train.lr=1e-2",
                "train.precision=fp32",
            ]
        )
        == 0
    )
    m = _metrics(out)
    assert abs(m[0]["replay_loss"]) < 1e-2 and m[-1]["replay_loss"] > m[0]["replay_loss"]
    assert list((tmp_path / "cache" / "replay").glob("*-top16.pt"))


def test_sampling_continues_the_openings(tokenizer):
    """With prompts, every sample is start token + one opening + what the model wrote after it,
    spread evenly over the openings; the same seed gives the same samples."""
    from helpers import make_llama

    model = make_llama(vocab=len(tokenizer))
    openings = ["The river", "In the year", "Bread"]
    kw = dict(samples=7, length=3, temperature=1.0, top_p=1.0, seed=0, prompts=openings)
    got = sample_from_model(model, tokenizer, **kw)
    assert got == sample_from_model(model, tokenizer, **kw) and len(got) == 7
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in openings]
    owner = [next(i for i, o in enumerate(ids) if s[1 : 1 + len(o)] == o) for s in got]
    assert sorted(owner) == [0, 0, 0, 1, 1, 2, 2]
    assert all(s[0] == start_token(tokenizer) and len(s) <= 1 + len(ids[o]) + 3 for s, o in zip(got, owner))


def test_prompts_key_the_cache_and_none_keeps_the_old_key():
    plain = load_recipe(TINY, SMALL)
    assert _self_key(plain) == _self_key(load_recipe(TINY, [*SMALL, "replay.prompts=none"]))
    assert _self_key(plain) != _self_key(load_recipe(TINY, [*SMALL, "replay.prompts=generic"]))


def test_generic_openings_are_not_retention_prompts():
    """The shipped openings are ordinary sentence starts: none but a bare article begins a
    retention-set prompt, so the replay never asks the base for the retention answers."""
    openings = read_prompts("generic")
    assert len(openings) >= 30 and len(set(openings)) == len(openings)
    rows = [
        json.loads(line) for line in (Contamination.__init__.__globals__["RETENTION_DIR"] / "knowledge.jsonl").open()
    ]
    for opening in openings:
        if opening in ("The", "A"):
            continue
        assert not [r["prompt"] for r in rows if r["prompt"].lower().startswith(opening.lower())], opening


def test_prompts_need_self_sampling(tmp_path):
    with pytest.raises(RecipeError, match="replay.prompts needs replay.source=self"):
        load_recipe(
            TINY, [*SMALL, "replay.rows=1", f"replay.source={_replay_file(tmp_path)}", "replay.prompts=generic"]
        )
