"""fim: PSM and SPM rearrangements give back the text, at the configured rates."""

import random

import torch

from bico import IntervalMask
from bico.objectives import IGNORE, build_objective
from helpers import dense, example, text


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
            prefix, suffix, middle = body[pre + 1 : suf], body[suf + 1 : mid], body[mid + 1 :]
            assert prefix + middle + suffix == ids[:-1]
        else:
            assert body[:2] == [obj.pre_id, obj.suf_id]
            suffix, rest = body[2:mid], body[mid + 1 :]
            assert rest + suffix == ids[:-1]
    assert abs(modes["ntp"] / 500 - 0.3) < 0.06 and abs(modes["spm"] / (modes["psm"] + modes["spm"]) - 0.4) < 0.07
    s = obj.encode(ex, random.Random(1))
    assert torch.equal(dense(s), IntervalMask.causal(len(s)).dense()[0])
    assert s.targets.tolist() == s.input_ids.tolist()[1:] + [IGNORE]
