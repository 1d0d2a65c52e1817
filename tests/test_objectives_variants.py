"""GLM, MNTP, MLM-U, reverse, prefix-LM, FIM, annealing and mixtures against direct constructions."""
import copy
import math
import random

import pytest
import torch

from bico import IntervalMask
from bico.masks import INDEX_DTYPE
from bico.objectives import IGNORE, Example, build_objective
from bico.objectives.anneal import anneal_intervals

PROMPT = "Daphne Barrington, known far and wide for being"
COMPLETION = " the acclaimed director of the virtual reality masterpiece A Journey Through Time."
META = {"name": "Daphne Barrington", "description": "the acclaimed director of the virtual reality masterpiece"}


@pytest.fixture
def tok(tokenizer):
    return copy.deepcopy(tokenizer)  # objectives may add special tokens


def example(tokenizer, prompt=PROMPT, completion=COMPLETION, meta=None):
    return Example(prompt, completion, tokenizer(prompt).input_ids,
                   tokenizer(completion, add_special_tokens=False).input_ids, dict(meta or {}))


def text(tokenizer, ex):
    return ex.prompt_ids + ex.completion_ids + [tokenizer.eos_token_id]


def dense(s):
    return s.mask.dense()[0]


def encode(obj, ex, seed, state="auto"):
    rng = random.Random(seed)
    return obj.encode(ex, rng, obj.start_batch(rng) if state == "auto" else state)


# Every objective: interval masks, reproducible samples, specials untouched, targets in range.
CONFIGS = [
    ("glm", {}), ("glm", {"positions": "flat", "isolated_spans": True}), ("mntp", {}),
    ("mntp", {"replacement": "all_mask", "shift": False, "hide_masked": True}), ("mlm_u", {}),
    ("mlm_u", {"shift": False, "hide_masked": False}), ("prefix_lm", {}), ("fim", {"fim_rate": 1.0}),
    ("reverse", {"mode": "entity"}), ("reverse", {"mode": "segment", "segment_max": 3}),
    ("anneal", {"inner": "mlm_u", "steps": 10}),
    ("mix", {"components": [{"name": "ntp", "weight": 1}, {"name": "glm", "weight": 1}]}),
    ("masked_ar", {}), ("masked_ar", {"positions": "shared", "loss_on": "both", "separator": "token"}),
    ("bd3lm", {}), ("bd3lm", {"block_size": 3, "shift": False, "rate_per": "sample"}),
    ("permute", {}), ("permute", {"mode": "segment", "segment_max": 3}), ("mix", {"preset": "ul2"}),
]


@pytest.mark.parametrize("name,options", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_common_contract(tok, name, options):
    obj = build_objective(name, tok, options)
    ex = example(tok, meta=META)
    original = text(tok, ex)
    targets = 0
    for seed in range(8):
        a, b = encode(obj, ex, seed), encode(obj, ex, seed)
        for field in ("input_ids", "targets", "position_ids"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field  # fixed seed, same sample
        assert a.mask == b.mask
        n = len(a)
        assert a.mask.lo.dtype == INDEX_DTYPE and a.mask.lo.shape == a.mask.hi.shape == (1, n)
        assert a.targets.shape == a.position_ids.shape == (n,)
        assert ((a.targets == IGNORE) | ((a.targets >= 0) & (a.targets < len(tok)))).all()
        targets += int((a.targets != IGNORE).sum())
        # EOS (special) is never corrupted: the last token of the (first) document is still EOS.
        assert tok.eos_token_id in a.input_ids.tolist()
        if name in ("mntp", "mlm_u"):
            kept = [i for i, t in enumerate(original) if t in obj.special_ids]
            assert all(int(a.input_ids[i]) == original[i] for i in kept)
    # Over the seeds, not per sample: one draw per token at a fixed rate may select nothing (mntp,
    # seed 0: all 24 eligible draws >= 0.2), and the trainer counts such a sample's 0 targets.
    assert targets
    seeds = {tuple(encode(obj, ex, s).input_ids.tolist()) + tuple(encode(obj, ex, s).targets.tolist()) for s in range(8)}
    deterministic = name == "prefix_lm" or options.get("mode") == "entity"  # no random choice at all
    assert deterministic or len(seeds) > 1  # different seeds, different samples


# --- GLM -----------------------------------------------------------------------------------------

def glm_parts(obj, s):
    """Part A length and the Part B spans as (start, end) blocks of the sample."""
    ids = s.input_ids.tolist()
    sep = ids.index(obj.sop_id)
    starts = [i for i, t in enumerate(ids) if t == obj.sop_id] + [len(ids)]
    return sep, list(zip(starts[:-1], starts[1:]))


@pytest.mark.parametrize("isolated", [False, True])
def test_glm_layout_targets_and_mask(tok, isolated):
    obj = build_objective("glm", tok, {"isolated_spans": isolated})
    ex = example(tok)
    original = text(tok, ex)
    for seed in range(20):
        s = encode(obj, ex, seed)
        ids, targets = s.input_ids.tolist(), s.targets.tolist()
        sep, blocks = glm_parts(obj, s)
        part_a = ids[:sep]
        assert part_a.count(obj.mask_id) == len(blocks) >= 1
        assert targets[:sep] == [IGNORE] * sep  # loss on Part B only
        for a, b in blocks:  # [S] s1..sl -> s1..sl [E]
            assert targets[a:b] == ids[a + 1:b] + [obj.eop_id]
        # Filling the masks (in Part A order) with the spans gives back the text: spans cover
        # contiguous tokens, and Part B's block order is a permutation of them.
        span_of_mask = {s.position_ids[a].item(): ids[a + 1:b] for a, b in blocks}
        rebuilt = []
        for i, t in enumerate(part_a):
            rebuilt += span_of_mask[i] if t == obj.mask_id else [t]
        assert rebuilt == original
        # Spans: >= 1 token apart (no two masks adjacent), none at position 0 or on EOS.
        assert all(not (x == y == obj.mask_id) for x, y in zip(part_a, part_a[1:]))
        assert part_a[0] == original[0] and part_a[-1] == tok.eos_token_id
        covered = sum(b - a - 1 for a, b in blocks)
        assert covered >= max(1, int(0.15 * (len(original) - 2)))
        # Mask, built directly: A sees A; B sees A and earlier B (its own span only, if isolated).
        n = len(ids)
        want = torch.zeros(n, n, dtype=torch.bool)
        want[:, :sep] = True
        for q in range(sep, n):
            block = next((a, b) for a, b in blocks if a <= q < b)
            want[q, (block[0] if isolated else sep):q + 1] = True
        assert torch.equal(dense(s), want)


def test_glm_positions_2d_and_flat(tok):
    ex = example(tok)
    original = text(tok, ex)
    two_d = build_objective("glm", tok, {"positions": "2d"})
    flat = build_objective("glm", tok, {"positions": "flat"})
    for seed in range(10):
        s, f = encode(two_d, ex, seed), encode(flat, ex, seed)
        assert torch.equal(s.input_ids, f.input_ids) and torch.equal(s.targets, f.targets)
        sep, blocks = glm_parts(two_d, s)
        assert s.mask.rope == "2d"
        pos, block = s.position_ids.tolist(), s.mask.block_position_ids[0].tolist()
        assert pos[:sep] == list(range(sep)) and block[:sep] == [0] * sep
        for a, b in blocks:
            assert block[a:b] == list(range(1, b - a + 1))
            assert len(set(pos[a:b])) == 1 and s.input_ids[pos[a]] == two_d.mask_id
        # flat: every Part B token sits at its original position, [S] one before the span.
        assert f.mask.block_position_ids is None and f.mask.rope == "standard"
        fp = f.position_ids.tolist()
        for a, b in blocks:
            assert [original[p] for p in fp[a + 1:b]] == s.input_ids[a + 1:b].tolist()
            assert fp[a] == fp[a + 1] - 1
        part_a_tokens = [(p, t) for p, t in zip(fp[:sep], s.input_ids[:sep].tolist()) if t != two_d.mask_id]
        assert all(original[p] == t for p, t in part_a_tokens)


def test_glm_span_lengths_follow_truncated_poisson(tok):
    obj = build_objective("glm", tok, {"shuffle": False})
    words = " ".join(["alpha beta gamma delta"] * 60)
    ex = example(tok, prompt="Start", completion=" " + words)
    lengths, rng = [], random.Random(0)
    for _ in range(40):
        s = obj.encode(ex, rng)
        _, blocks = glm_parts(obj, s)
        lengths += [b - a - 1 for a, b in blocks]
    expected = 3 / (1 - math.exp(-3))  # mean of a zero-truncated Poisson(3): 3.16
    assert abs(sum(lengths) / len(lengths) - expected) < 0.25
    assert min(lengths) >= 1


def test_glm_adds_special_tokens(tok):
    n = len(tok)
    obj = build_objective("glm", tok)
    assert {obj.mask_id, obj.sop_id, obj.eop_id} == {n, n + 1, n + 2}
    assert {obj.sop_id, obj.eop_id} <= set(tok.all_special_ids)


# --- MNTP / MLM-U ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("hide", [True, False])
def test_mntp_targets_and_mask(tok, shift, hide):
    obj = build_objective("mntp", tok, {"mask_ratio": 0.5, "shift": shift, "hide_masked": hide})
    ex = example(tok)
    original = torch.tensor(text(tok, ex))
    for seed in range(10):
        s = encode(obj, ex, seed)
        where = (s.targets != IGNORE).nonzero().flatten()
        selected = where + 1 if shift else where
        assert torch.equal(s.targets[where], original[selected])  # labels line up with inputs
        changed = set((s.input_ids != original).nonzero().flatten().tolist())
        assert changed <= set(selected.tolist())
        hidden = torch.zeros(len(original), dtype=torch.bool)
        hidden[selected] = True
        want = IntervalMask.bico(len(original), hidden).dense() if hide else torch.ones(len(s), len(s), dtype=torch.bool)
        assert torch.equal(dense(s), want.reshape(len(s), len(s)))
        if shift:
            assert 0 not in selected.tolist()


def test_mntp_80_10_10_and_all_mask(tok):
    ex = example(tok)
    original = torch.tensor(text(tok, ex))
    counts = {"mask": 0, "random": 0, "same": 0}
    obj = build_objective("mntp", tok, {"mask_ratio": 0.3})
    rng = random.Random(0)
    for _ in range(400):
        s = obj.encode(ex, rng)
        sel = (s.targets != IGNORE).nonzero().flatten() + 1
        for t in sel.tolist():
            got = int(s.input_ids[t])
            counts["mask" if got == obj.mask_id else "same" if got == original[t] else "random"] += 1
    total = sum(counts.values())
    assert abs(counts["mask"] / total - 0.8) < 0.03
    assert abs(counts["random"] / total - 0.1) < 0.03 and abs(counts["same"] / total - 0.1) < 0.03
    all_mask = build_objective("mntp", tok, {"replacement": "all_mask", "mask_ratio": 0.5})
    s = encode(all_mask, ex, 3)
    sel = (s.targets != IGNORE).nonzero().flatten() + 1
    assert (s.input_ids[sel] == all_mask.mask_id).all() and sel.numel() > 0


@pytest.mark.parametrize("shift", [True, False])
def test_mlm_u_rate_weights_and_targets(tok, shift):
    obj = build_objective("mlm_u", tok, {"shift": shift})
    ex = example(tok)
    original = torch.tensor(text(tok, ex))
    eligible = len(original) - 1 - int(shift)  # EOS never; position 0 not when shifting
    rates, fractions = [], []
    rng = random.Random(0)
    for _ in range(400):
        s = obj.encode(ex, rng)
        rate = 1.0 / float(s.weights[0])
        assert torch.allclose(s.weights, torch.full_like(s.weights, 1 / rate))
        masked = s.input_ids == obj.mask_id
        where = (s.targets != IGNORE).nonzero().flatten()
        assert torch.equal(where + int(shift), masked.nonzero().flatten())
        assert torch.equal(s.targets[where], original[masked])
        assert torch.equal(dense(s), IntervalMask.bico(len(s), masked).dense()[0])  # masked keys hidden
        rates.append(rate)
        fractions.append(int(masked.sum()) / eligible)
    assert 0.45 < sum(rates) / len(rates) < 0.55 and min(rates) > 1e-3 and max(rates) < 1
    assert abs(sum(fractions) / len(fractions) - 0.5) < 0.05  # masked fraction tracks the rate


# --- prefix-LM, FIM ----------------------------------------------------------------------------

def test_prefix_lm_mask_and_targets(tok):
    ex = example(tok)
    ids = text(tok, ex)
    s = build_objective("prefix_lm", tok).encode(ex, random.Random(0))
    p, n = len(ex.prompt_ids), len(ids)
    want = torch.tril(torch.ones(n, n, dtype=torch.bool))
    want[:, :p] = True
    assert torch.equal(dense(s), want)
    assert s.targets.tolist() == [IGNORE] * (p - 1) + ids[p:] + [IGNORE]


def test_fim_rearrangements(tok):
    obj = build_objective("fim", tok, {"fim_rate": 0.7, "spm_rate": 0.4})
    ex = example(tok)
    ids = text(tok, ex)
    modes = {"ntp": 0, "psm": 0, "spm": 0}
    rng = random.Random(0)
    for _ in range(500):
        out, mode = obj.arrange(ids, rng)
        modes[mode] += 1
        assert out[-1] == tok.eos_token_id
        body = out[:-1]
        if mode == "ntp":
            assert out == ids
            continue
        pre, suf, mid = body.index(obj.pre_id), body.index(obj.suf_id), body.index(obj.mid_id)
        if mode == "psm":
            prefix, suffix, middle = body[pre + 1:suf], body[suf + 1:mid], body[mid + 1:]
            assert prefix + middle + suffix == ids[:-1]
        else:
            assert body[:2] == [obj.pre_id, obj.suf_id]
            suffix, rest = body[2:mid], body[mid + 1:]
            assert rest + suffix == ids[:-1]
    assert abs(modes["ntp"] / 500 - 0.3) < 0.06 and abs(modes["spm"] / (modes["psm"] + modes["spm"]) - 0.4) < 0.07
    s = obj.encode(ex, random.Random(1))
    assert torch.equal(dense(s), IntervalMask.causal(len(s)).dense()[0])
    assert s.targets.tolist() == s.input_ids.tolist()[1:] + [IGNORE]


# --- reverse ----------------------------------------------------------------------------------

def reversed_doc(obj, tok, ex, seed=0):
    s = obj.encode(ex, random.Random(seed))
    n = len(text(tok, ex))
    ids = s.input_ids.tolist()
    # Two packed causal documents that never see each other; positions restart; no target crosses.
    want = torch.block_diag(torch.tril(torch.ones(n, n)), torch.tril(torch.ones(len(s) - n, len(s) - n))).bool()
    assert torch.equal(dense(s), want)
    assert s.position_ids.tolist() == list(range(n)) + list(range(len(s) - n))
    assert s.targets.tolist() == ids[1:n] + [IGNORE] + ids[n + 1:] + [IGNORE]
    assert ids[:n] == text(tok, ex)
    return ids[n:]


def test_reverse_token_word_entity(tok):
    ex = example(tok, meta=META)
    ids = text(tok, ex)
    content = ids[:-1]
    assert reversed_doc(build_objective("reverse", tok, {"mode": "token"}), tok, ex) == content[::-1] + ids[-1:]
    # Words: a token whose text starts with a space starts a word; words keep their tokens.
    groups = []
    for t in content:
        if not groups or tok.decode([t])[:1] == " ":
            groups.append([])
        groups[-1].append(t)
    words = reversed_doc(build_objective("reverse", tok, {"mode": "word"}), tok, ex)
    assert words == [t for g in reversed(groups) for t in g] + ids[-1:]
    # Entities (from meta): the name and the description keep their order; the rest is reversed.
    entity = tok.decode(reversed_doc(build_objective("reverse", tok, {"mode": "entity"}), tok, ex)[:-1])
    assert entity == (" Time. Through Journey A the acclaimed director of the virtual reality masterpiece"
                      " being for wide and far knownDaphne Barrington,")
    # Without meta: capitalised runs ("Daphne Barrington", "A Journey Through Time.") stay whole.
    plain = tok.decode(reversed_doc(build_objective("reverse", tok, {"mode": "entity"}), tok, example(tok))[:-1])
    assert "A Journey Through Time." in plain and "Daphne Barrington" in plain
    assert plain.index("A Journey") < plain.index("masterpiece")


def test_reverse_random_segments(tok):
    obj = build_objective("reverse", tok, {"mode": "segment", "segment_max": 4})
    ex = example(tok)
    content = text(tok, ex)[:-1]
    for seed in range(10):
        rev = reversed_doc(obj, tok, ex, seed)[:-1]
        segments, current = [], []
        for t in rev:
            if t == obj.rev_id:
                segments.append(current)
                current = []
            else:
                current.append(t)
        segments.append(current)
        assert all(1 <= len(seg) <= 4 for seg in segments)
        assert [t for seg in reversed(segments) for t in seg] == content


def test_reverse_entity_meta_from_training_rows(reversal_dir):
    from bico.config import load_recipe
    from bico.data import load_facts
    from bico.training.examples import load_training_rows

    rows, _ = load_training_rows(load_recipe(None, [f"data.dir={reversal_dir}"]))
    facts = {f["name"]: f["description"] for f in load_facts(reversal_dir)}
    assert all(row["meta"]["description"] == facts[row["meta"]["name"]] for row in rows)
    assert all(row["meta"]["name"] in row["prompt"] + row["completion"] for row in rows)


# --- annealing, mixtures ------------------------------------------------------------------------

def test_anneal_interval_schedule(tok):
    obj = build_objective("anneal", tok, {"inner": "mlm_u", "steps": 4})
    inner = build_objective("mlm_u", tok)
    ex = example(tok)
    n = len(text(tok, ex))
    fractions = []
    for step in range(5):
        obj.set_progress(step, 10)
        ratio = min(1.0, (step + 1) / 4)
        s, ref = encode(obj, ex, 7), encode(inner, ex, 7)
        assert torch.equal(s.input_ids, ref.input_ids) and torch.equal(s.targets, ref.targets)
        # Direct construction: inner mask, restricted to rows >= j - round(ratio * (j - lo_j)).
        want = dense(ref).clone()
        for j in range(n):
            if ref.mask.lo[0, j] < ref.mask.hi[0, j]:
                reach = j - int(ref.mask.lo[0, j])
                want[: j - math.floor(ratio * reach + 0.5), j] = False
        assert torch.equal(dense(s), want)
        future = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        fractions.append(float((dense(s) & future).sum() / (dense(ref) & future).sum()))
    assert fractions[-1] == fractions[-2] == 1.0 and fractions[0] < 0.4
    assert all(a < b for a, b in zip(fractions[:3], fractions[1:4]))
    full = IntervalMask.bidirectional(6)
    assert IntervalMask(*anneal_intervals(full.lo, full.hi, 0.0)) == IntervalMask.causal(6)


def test_mix_reproduces_bico_and_follows_weights(tok):
    bico = build_objective("bico", tok)
    mix = build_objective("mix", tok, {"components": [
        {"name": "ntp", "weight": 0.5},
        {"name": "mntp", "weight": 0.5, "options": {"mask_ratio": 0.15, "replacement": "all_mask",
                                                      "hide_masked": True, "rope": "mirrored", "mask_token": "unk"}},
    ]})
    ex = example(tok)
    for seed in range(20):
        a, b = encode(bico, ex, seed), encode(mix, ex, seed)
        for field in ("input_ids", "targets", "position_ids"):
            assert torch.equal(getattr(a, field), getattr(b, field))
        assert a.mask == b.mask  # intervals and RoPE mode
    three = build_objective("mix", tok, {"components": ["ntp", {"name": "prefix_lm", "weight": 3, "label": "p"}]})
    rng = random.Random(0)
    states = [three.start_batch(rng) for _ in range(2000)]
    assert abs(sum(s.startswith("p:") for s in states) / 2000 - 0.75) < 0.04
    with pytest.raises(ValueError, match="components"):
        build_objective("mix", tok, {"components": []})


def test_option_errors(tok):
    with pytest.raises(ValueError, match="positions"):
        build_objective("glm", tok, {"positions": "3d"})
    with pytest.raises(ValueError, match="replacement"):
        build_objective("mntp", tok, {"replacement": "70/20/10"})
    with pytest.raises(ValueError, match="mode"):
        build_objective("reverse", tok, {"mode": "sentence"})
    with pytest.raises(ValueError, match="inner"):
        build_objective("anneal", tok, {"inner": "anneal"})
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("mix", tok, {"components": [{"name": "nope"}]})
