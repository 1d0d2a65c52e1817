"""mix: reproducing bico from components, component weights, the UL2 preset and its mode tokens."""

import random

import pytest
import torch

from bico.objectives import Example, build_objective
from bico.objectives.mix import with_mode_token
from helpers import META, PROMPT, encode, example


def test_mix_reproduces_bico_and_follows_weights(tok):
    bico = build_objective("bico", tok)
    mix = build_objective(
        "mix",
        tok,
        {
            "components": [
                {"name": "ntp", "weight": 0.5},
                {
                    "name": "mntp",
                    "weight": 0.5,
                    "options": {
                        "mask_ratio": 0.15,
                        "replacement": "all_mask",
                        "hide_masked": True,
                        "rope": "mirrored",
                        "mask_token": "unk",
                    },
                },
            ]
        },
    )
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


def test_ul2_preset_reuses_glm_and_prefix_lm_with_mode_tokens(tok):
    ul2 = build_objective("mix", tok, {"preset": "ul2"})
    assert ul2.labels == ["R", "S", "X"] and [c.name for c in ul2.components] == ["glm", "prefix_lm", "glm"]
    modes = [tok.convert_ids_to_tokens(m) for m in ul2.mode_ids]
    assert modes == ["[R]", "[S]", "[X]"] and set(ul2.mode_ids) <= set(tok.all_special_ids)
    assert all(set(ul2.mode_ids) <= c.special_ids for c in ul2.components)  # never masked
    r, x = ul2.components[0], ul2.components[2]
    assert (r.mask_ratio, r.poisson_lambda, x.mask_ratio, x.poisson_lambda) == (0.15, 3.0, 0.5, 32.0)
    ex = example(tok, meta=META)
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
        ref = comp.encode(
            with_mode_token(ex, ul2.mode_ids[state.index], ul2.special_ids), ref_rng, comp.start_batch(ref_rng)
        )
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


def test_option_errors(tok):
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("mix", tok, {"components": [{"name": "nope"}]})
