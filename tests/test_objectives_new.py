"""masked_ar, bd3lm, permute, the UL2 preset of mix and the identity bridge, against direct constructions."""
import copy
import random

import pytest
import torch

from bico.objectives import IGNORE, Example, build_objective
from bico.objectives.mix import with_mode_token

PROMPT = "Daphne Barrington, known far and wide for being"
COMPLETION = " the acclaimed director of the virtual reality masterpiece A Journey Through Time."
META = {"name": "Daphne Barrington", "description": "the acclaimed director of the virtual reality masterpiece"}


@pytest.fixture
def tok(tokenizer):
    return copy.deepcopy(tokenizer)  # objectives add special tokens


def example(tokenizer, prompt=PROMPT, completion=COMPLETION, meta=META):
    return Example(prompt, completion, tokenizer(prompt).input_ids,
                   tokenizer(completion, add_special_tokens=False).input_ids, dict(meta or {}))


def text(tokenizer, ex):
    return ex.prompt_ids + ex.completion_ids + [tokenizer.eos_token_id]


def random_example(tokenizer, rng):
    """Random ordinary tokens: prompt 1..12, completion 1..20 (so odd lengths and partial blocks)."""
    ids = [rng.randrange(300, 5000) for _ in range(rng.randint(2, 32))]
    cut = rng.randint(1, len(ids) - 1)
    return Example("p", "c", ids[:cut], ids[cut:], {})


# --- masked_ar ----------------------------------------------------------------------------------

@pytest.mark.parametrize("positions", ["continue", "shared"])
@pytest.mark.parametrize("loss_on", ["original", "both"])
def test_masked_ar_layout_targets_positions(tok, positions, loss_on):
    obj = build_objective("masked_ar", tok, {"positions": positions, "loss_on": loss_on})
    ex = example(tok)
    ids = text(tok, ex)
    content, n = ids[:-1], len(ids) - 1  # the SmolLM2 tokenizer adds no BOS: content = all but EOS
    sep = obj.sep_ids
    assert tok.decode(sep) == "\nReturn the recovered masked passage.\nHere is the recovered text:\n\n"
    fractions = []
    for seed in range(30):
        s = obj.encode(ex, random.Random(seed), obj.start_batch(random.Random(seed)))
        got = s.input_ids.tolist()
        corrupted = got[:n]
        assert got[n:n + len(sep)] == sep and got[n + len(sep):] == ids  # original copy + EOS
        assert all(c == t or c == obj.mask_id for c, t in zip(corrupted, content))
        fractions.append(sum(c == obj.mask_id for c in corrupted) / n)
        want = [IGNORE] * len(got)
        first = n + len(sep)
        for i in range(first, len(got)):
            want[i - 1] = got[i]  # the original copy, from the last separator token on
        if loss_on == "both":
            for i in range(1, n):
                if corrupted[i] != obj.mask_id:
                    want[i - 1] = got[i]
        assert s.targets.tolist() == want
        assert torch.equal(s.mask.dense()[0], torch.tril(torch.ones(len(got), len(got), dtype=torch.bool)))
        pos = s.position_ids.tolist()
        if positions == "continue":
            assert pos == list(range(len(got)))
        else:
            assert pos[:first] == list(range(first)) and pos[first:first + n] == list(range(n))
            assert pos[-1] == n  # EOS after the copy
    assert 0.3 < sum(fractions) / len(fractions) < 0.7  # t ~ U[0.05, 0.95]: mean 0.5


def test_masked_ar_rate_per_batch_and_token_separator(tok):
    obj = build_objective("masked_ar", tok, {"rate_per": "batch", "min_rate": 0.3, "max_rate": 0.3})
    assert obj.start_batch(random.Random(0)) == pytest.approx(0.3)
    tokens = build_objective("masked_ar", tok, {"separator": "token", "rate_per": "sample"})
    assert tokens.start_batch(random.Random(0)) is None and len(tokens.sep_ids) == 1
    assert tokens.sep_ids[0] in set(tok.all_special_ids)
    with pytest.raises(ValueError, match="positions must be one of continue, shared"):
        build_objective("masked_ar", tok, {"positions": "restart"})
    with pytest.raises(ValueError, match="min_rate <= max_rate"):
        build_objective("masked_ar", tok, {"min_rate": 0.9, "max_rate": 0.1})


# --- bd3lm ----------------------------------------------------------------------------------------

def bd3lm_reference(n, bs):
    """BD3LM's training mask on [x_t, x_0] (dLLM's ``block_diff_mask``), query x key."""
    idx = torch.arange(2 * n)
    clean = idx >= n
    block = torch.where(clean, idx - n, idx) // bs
    bq, bk, cq, ck = block[:, None], block[None, :], clean[:, None], clean[None, :]
    return ((bq == bk) & (cq == ck)) | ((bq > bk) & ck & ~cq) | ((bq >= bk) & ck & cq)


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("rate_per", ["block", "sample"])
def test_bd3lm_against_the_dense_definition(tok, shift, rate_per):
    rng = random.Random(0)
    for trial in range(40):
        bs = rng.randint(1, 7)
        obj = build_objective("bd3lm", tok, {"block_size": bs, "shift": shift, "rate_per": rate_per})
        ex = random_example(tok, rng)
        ids = text(tok, ex)
        n, blocks = len(ids), -(-len(ids) // bs)
        s = obj.encode(ex, random.Random(trial))
        pos, got = s.position_ids.tolist(), s.input_ids.tolist()
        # Layout: noisy_0, clean_0, ..., noisy_{B-1}; clean copies carry the text, noisy ones the text or masks.
        assert len(got) == n + min(n, (blocks - 1) * bs)
        is_clean, i = [], 0
        for b in range(blocks):
            for clean in (False, True) if b < blocks - 1 else (False,):
                span = list(range(b * bs, min(n, (b + 1) * bs)))
                assert pos[i:i + len(span)] == span
                is_clean += [clean] * len(span)
                i += len(span)
        for k, (p, t) in enumerate(zip(pos, got)):
            assert t == ids[p] if is_clean[k] else t in (ids[p], obj.mask_id)
        # The mask equals BD3LM's definition, restricted and reordered to this layout.
        ref = bd3lm_reference(n, bs)
        where = torch.tensor([p + n * c for p, c in zip(pos, is_clean)])
        assert torch.equal(s.mask.dense()[0], ref[where][:, where])
        # Targets: each masked token once, at its own position or one to its left, weighted 1/t.
        dense = s.mask.dense()[0]
        masked = [k for k, t in enumerate(got) if not is_clean[k] and t == obj.mask_id]
        assert len(masked) == int((s.targets != IGNORE).sum())
        assert not shift or all(pos[k] > 0 for k in masked)
        weight_of = {}
        for k in masked:
            p = pos[k]
            if not shift:
                at = k
            elif p % bs:
                at = k - 1
            else:
                at = next(j for j in range(len(got)) if is_clean[j] and pos[j] == p - 1)
            assert s.targets[at] == ids[p]
            weight_of.setdefault(p // bs if rate_per == "block" else 0, set()).add(float(s.weights[at]))
            # No leak: the predicting row sees no unmasked copy of the token it predicts.
            assert not any(dense[at, j] and pos[j] == p and got[j] != obj.mask_id for j in range(len(got)))
        # One rate per block (or per sample): every target of a block has the same weight 1/t >= 1.
        assert all(len(v) == 1 and min(v) >= 1.0 for v in weight_of.values())


def test_bd3lm_rates_and_errors(tok):
    obj = build_objective("bd3lm", tok, {"block_size": 4, "shift": False})
    ex = example(tok)
    n = len(text(tok, ex))
    fractions, rng = [], random.Random(0)
    for _ in range(300):
        s = obj.encode(ex, rng)
        fractions.append(float((s.input_ids == obj.mask_id).sum()) / (n - 1))
        targets = s.targets != IGNORE
        assert torch.equal(targets, s.input_ids == obj.mask_id)  # unshifted: at the masked position
    assert abs(sum(fractions) / len(fractions) - 0.5) < 0.05
    for bad, match in (({"block_size": 0}, "block_size"), ({"rate_per": "token"}, "block, sample")):
        with pytest.raises(ValueError, match=match):
            build_objective("bd3lm", tok, bad)


# --- permute ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["word", "entity", "segment", "token"])
def test_permute_orders_are_unit_permutations(tok, mode):
    obj = build_objective("permute", tok, {"mode": mode, "segment_max": 3})
    reverse = build_objective("reverse", tok, {"mode": mode, "segment_max": 3, "forward": False})
    ex = example(tok)
    ids = text(tok, ex)
    counts = {"original": 0, "reversed": 0, "permuted": 0}
    for seed in range(300):
        out, order = obj.arrange(ids, ex.meta, random.Random(seed))
        counts[order] += 1
        assert out[-1] == tok.eos_token_id
        body = [t for t in out[:-1] if t != obj.sep_id]
        assert sorted(body) == sorted(ids[:-1])  # the same tokens, reordered
        if order == "original":
            assert out == ids
        if order == "reversed":  # the shared segmenter: the reverse objective's reversal, draw for draw
            rng = random.Random(seed)
            rng.random()
            assert out == reverse.reverse_ids(ids, ex.meta, rng)
    assert all(abs(c / 300 - 1 / 3) < 0.08 for c in counts.values())
    s = obj.encode(ex, random.Random(1))
    assert torch.equal(s.mask.dense()[0], torch.tril(torch.ones(len(s), len(s), dtype=torch.bool)))
    assert s.targets.tolist() == s.input_ids.tolist()[1:] + [IGNORE]


def test_permute_entities_stay_whole_and_probabilities(tok):
    obj = build_objective("permute", tok, {"original_prob": 0, "reverse_prob": 0, "permute_prob": 1})
    ex = example(tok)
    for seed in range(20):
        out = tok.decode(obj.arrange(text(tok, ex), ex.meta, random.Random(seed))[0])
        assert "Daphne Barrington" in out and META["description"] in out
    with pytest.raises(ValueError, match="sum to 1"):
        build_objective("permute", tok, {"original_prob": 0.5, "reverse_prob": 0.5, "permute_prob": 0.5})
    with pytest.raises(ValueError, match="mode must be one of token, word, entity, segment"):
        build_objective("permute", tok, {"mode": "phrase"})


# --- UL2 as a preset of mix --------------------------------------------------------------------------

def test_ul2_preset_reuses_glm_and_prefix_lm_with_mode_tokens(tok):
    ul2 = build_objective("mix", tok, {"preset": "ul2"})
    assert ul2.labels == ["R", "S", "X"] and [c.name for c in ul2.components] == ["glm", "prefix_lm", "glm"]
    modes = [tok.convert_ids_to_tokens(m) for m in ul2.mode_ids]
    assert modes == ["[R]", "[S]", "[X]"] and set(ul2.mode_ids) <= set(tok.all_special_ids)
    assert all(set(ul2.mode_ids) <= c.special_ids for c in ul2.components)  # never masked
    r, x = ul2.components[0], ul2.components[2]
    assert (r.mask_ratio, r.poisson_lambda, x.mask_ratio, x.poisson_lambda) == (0.15, 3.0, 0.5, 32.0)
    ex = example(tok)
    seen = set()
    for seed in range(40):
        rng = random.Random(seed)
        state = ul2.start_batch(rng)
        s = ul2.encode(ex, rng, state)
        seen.add(state.index)
        assert int(s.input_ids[0]) == ul2.mode_ids[state.index]  # no BOS here: the mode token comes first
        # Direct: the component itself on the example with the mode token, same draws.
        ref_rng = random.Random(seed)
        ref_rng.choices(range(3), weights=ul2.weights)
        comp = ul2.components[state.index]
        ref = comp.encode(with_mode_token(ex, ul2.mode_ids[state.index], ul2.special_ids), ref_rng, comp.start_batch(ref_rng))
        assert torch.equal(s.input_ids, ref.input_ids) and torch.equal(s.targets, ref.targets) and s.mask == ref.mask
    assert seen == {0, 1, 2}
    assert ex.prompt_ids == tok(PROMPT).input_ids  # the cached example is untouched


def test_mode_token_after_leading_specials_and_weights(tok):
    bos = tok.eos_token_id  # any special token stands in for a BOS
    ex = Example("p", "c", [bos, 500, 501], [502], {})
    assert with_mode_token(ex, 7, {bos}).prompt_ids == [bos, 7, 500, 501]
    mix = build_objective("mix", tok, {"preset": "ul2", "weights": {"S": 3, "R": 0, "X": 1}})
    rng = random.Random(0)
    labels = [mix.start_batch(rng).split(":")[0] for _ in range(2000)]
    assert labels.count("R") == 0 and abs(labels.count("S") / 2000 - 0.75) < 0.04
    with pytest.raises(ValueError, match="preset must be one of ul2"):
        build_objective("mix", tok, {"preset": "t5"})
    with pytest.raises(ValueError, match="names no component"):
        build_objective("mix", tok, {"preset": "ul2", "weights": {"Q": 1}})


# --- identity bridge ----------------------------------------------------------------------------------

def test_identity_bridge_rows(reversal_dir):
    from bico.config import load_recipe
    from bico.training.examples import load_training_rows

    base = [f"data.dir={reversal_dir}", "data.train_files=[p2d_prompts_train.jsonl]"]
    plain = list(load_training_rows(load_recipe(None, base))[0])  # the corpus, as row dicts
    rows, sources = load_training_rows(load_recipe(None, base + [
        'data.identity_bridge={"rate": 0.5, "templates": ["The name of {name} is {name}.", "{description} is {description}."]}']))
    added, names = rows[len(plain):], {r["meta"]["name"] for r in plain}
    assert rows[:len(plain)] == plain and len(sources) == len(rows)
    per_fact = len(plain) // len(names)
    assert len(added) == len(names) * max(1, round(0.5 * per_fact))
    for row in added:
        name, desc = row["meta"]["name"], row["meta"]["description"]
        assert (row["prompt"], row["completion"]) in {(f"The name of {name} is", f" {name}."), (f"{desc} is", f" {desc}.")}
    default, _ = load_training_rows(load_recipe(None, base + ["data.identity_bridge.rate=0.1"]))
    assert default[-1]["prompt"].startswith("The name of ") and len(default) - len(plain) == len(names) * round(0.1 * per_fact)


@pytest.mark.parametrize("value,match", [
    ("data.identity_bridge.rate=-1", "rate must be a number > 0"),
    ("data.identity_bridge.ratio=0.1", "valid: rate, templates"),
    ('data.identity_bridge.templates=["Hello {who}"]', "must use {name} and/or {description} only"),
    ("data.identity_bridge.templates=[]", "non-empty list of strings"),
])
def test_identity_bridge_errors_are_one_line(value, match):
    from bico.config import RecipeError, load_recipe

    with pytest.raises(RecipeError, match=match) as err:
        load_recipe(None, [value])
    assert "\n" not in str(err.value)


def test_identity_bridge_off_matches_runs_made_before_the_key():
    from bico.tools import ablate
    from bico.config import load_recipe
    from bico.training.rundir import recipe_differences

    now = load_recipe(None, []).to_dict()
    before = load_recipe(None, []).to_dict()
    del before["data"]["identity_bridge"]
    assert recipe_differences(before, now) == []  # resume of an older run: nothing changed
    assert recipe_differences(before, load_recipe(None, ["data.identity_bridge.rate=0.2"]).to_dict())
    assert ablate._comparable({"recipe": before}) == ablate._comparable({"recipe": now})  # finished cells reused
