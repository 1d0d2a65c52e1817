"""Evaluation reports: Wilson intervals on every proportion, retention (perplexity and general
knowledge) against direct computations, the base-model row and its cache, the generation margin."""

import json
import math

import torch

from bico.config import load_recipe
from bico.evaluation.reversal import base_scores, evaluate_split, perplexity, retention, write_report
from bico.evaluation.stats import wilson_interval
from bico.paths import RETENTION_DIR
from helpers import TINY_MODEL, make_llama

TINY = [
    "model.name=tiny-random",
    *TINY_MODEL,
    "train.progress=false",
    "eval.limit=4",
    "eval.max_new_tokens=4",
    "eval.splits=[p2d_prompts_test, p2d_reverse_prompts_test]",
]


def _model(tokenizer):
    return make_llama(vocab=len(tokenizer), hidden=32, heads=2, kv_heads=1, layers=1)


def test_split_metrics_carry_wilson_intervals(tokenizer, reversal_dir):
    from bico.data import load_split

    rows, randomized = load_split(reversal_dir, "p2d_prompts_test")
    m = evaluate_split(_model(tokenizer), tokenizer, rows[:6], randomized[:6], max_new_tokens=3)
    for name in ("exact_match", "substring_match", "logprob_win_rate"):
        low, high = m["ci95"][name]
        assert [low, high] == list(wilson_interval(round(m[name] * m["n"]), m["n"])) and low <= m[name] <= high


def test_perplexity_equals_a_direct_computation(tokenizer):
    model = _model(tokenizer)
    text = "The local variables of a code block can be determined by scanning the entire text of the block."
    got = perplexity(model, tokenizer, text, window=7, batch_size=2)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), 7):  # each window alone, its first token as context only
            window = torch.tensor([ids[i : i + 7]])
            if window.shape[1] < 2:
                continue
            logp = torch.log_softmax(model(window).logits.double()[0, :-1], -1)
            nll -= float(logp.gather(-1, window[0, 1:, None]).sum())
            count += window.shape[1] - 1
    assert got["tokens"] == count and math.isclose(got["perplexity"], math.exp(nll / count), rel_tol=1e-5)


def test_retention_files_and_scores(tokenizer):
    knowledge = [json.loads(line) for line in (RETENTION_DIR / "knowledge.jsonl").read_text().splitlines()]
    assert len(knowledge) >= 50 and all(r["completion"].startswith(" ") for r in knowledge)
    assert (RETENTION_DIR / "SOURCE.md").is_file()
    r = retention(_model(tokenizer), tokenizer)
    assert r["knowledge_n"] == len(knowledge) and r["perplexity_tokens"] > 3000
    assert math.isfinite(r["perplexity"]) and r["perplexity"] > 1
    assert r["knowledge_ci95"][0] <= r["knowledge_exact_match"] <= r["knowledge_ci95"][1]


def test_base_scores_are_cached_per_model_and_data(tmp_path, reversal_dir, monkeypatch):
    import bico.models

    monkeypatch.setenv("BICO_CACHE", str(tmp_path / "cache"))
    loads = []
    real = bico.models.load_model
    monkeypatch.setattr(bico.models, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    recipe = load_recipe(None, TINY + [f"data.dir={reversal_dir}", "eval.retention=true"])
    first = base_scores(recipe, progress=False)
    assert base_scores(recipe, progress=False) == first and len(loads) == 1  # second call: from the cache
    assert set(first["splits"]) == {"p2d_prompts_test", "p2d_reverse_prompts_test"} and "retention" in first
    other = load_recipe(None, TINY + [f"data.dir={reversal_dir}", "eval.retention=true", "model.init_seed=1"])
    base_scores(other, progress=False)
    assert len(loads) == 2  # another model: evaluated again


def test_report_shows_the_base_row_and_retention(tmp_path, tokenizer, reversal_dir):
    from bico.evaluation.reversal import evaluate

    model = _model(tokenizer)
    scores = evaluate(
        model,
        tokenizer,
        reversal_dir,
        ["p2d_prompts_test"],
        limit=3,
        max_new_tokens=3,
        progress=False,
        with_retention=True,
    )
    paths = write_report({"ntp": scores}, tmp_path, base=scores)
    saved = json.loads(paths["json"].read_text())
    assert saved["splits"] == scores["splits"] and saved["base"]["splits"] == scores["splits"]
    table = paths["md"].read_text()
    assert "| base | p2d_prompts_test |" in table and "| ntp | p2d_prompts_test |" in table
    assert "Wilson" in table and "| base | " in table.split("Retention")[1]


def test_generation_margin_caps_new_tokens(tokenizer, monkeypatch):
    import bico.evaluation.reversal as E

    seen = {}

    def fake_generate(model, tok, prompts, *, max_new_tokens, **kwargs):
        seen["max_new_tokens"] = max_new_tokens
        return ["" for _ in prompts]

    monkeypatch.setattr(E, "generate_greedy", fake_generate)
    monkeypatch.setattr(E, "completion_logprobs", lambda m, t, p, c, **k: [0.0] * len(p))
    rows = [{"prompt": "Who?", "completion": " Daphne Barrington"}]
    longest = len(tokenizer(" Daphne Barrington", add_special_tokens=False).input_ids)
    E.evaluate_split(None, tokenizer, rows, rows, max_new_tokens=32, generation_margin=3)
    assert seen["max_new_tokens"] == longest + 3
    E.evaluate_split(None, tokenizer, rows, rows, max_new_tokens=32)
    assert seen["max_new_tokens"] == 32
