"""bd3lm: layout, mask and targets against BD3LM's dense definition; rates and errors."""

import random

import pytest
import torch

from bico.objectives import IGNORE, Example, build_objective
from helpers import META, example, text


def random_example(tokenizer, rng):
    """Random ordinary tokens: prompt 1..12, completion 1..20 (so odd lengths and partial blocks)."""
    ids = [rng.randrange(300, 5000) for _ in range(rng.randint(2, 32))]
    cut = rng.randint(1, len(ids) - 1)
    return Example("p", "c", ids[:cut], ids[cut:], {})


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
                assert pos[i : i + len(span)] == span
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
    ex = example(tok, meta=META)
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
