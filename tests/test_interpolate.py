"""Weight interpolation with the base model (WiSE-FT): exact endpoints, added tokens, clear errors."""

import json

import pytest
import torch

from bico.cli import main
from bico.evaluation.interpolate import InterpolationError, Interpolator, parse_alphas
from helpers import make_llama


def test_endpoints_and_midpoint_are_exact():
    tuned, base = make_llama(seed=1), make_llama(seed=2)
    want_tuned = {k: v.clone() for k, v in tuned.state_dict().items()}
    want_base = base.state_dict()
    mixer = Interpolator(tuned, base)
    for name, value in mixer.set(0.0).state_dict().items():
        assert torch.equal(value, want_base[name]), name
    for name, value in mixer.set(0.5).state_dict().items():
        assert torch.allclose(value, (want_base[name] + want_tuned[name]) / 2, atol=1e-7), name
    for name, value in mixer.set(1.0).state_dict().items():
        assert torch.equal(value, want_tuned[name]), name


def test_added_token_rows_keep_their_finetuned_values():
    tuned, base = make_llama(vocab=130, seed=1), make_llama(vocab=128, seed=2)
    added = tuned.get_input_embeddings().weight[128:].detach().clone()
    mixer = Interpolator(tuned, base)
    emb = mixer.set(0.0).get_input_embeddings().weight
    assert torch.equal(emb[:128], base.get_input_embeddings().weight)
    assert torch.equal(emb[128:], added)


def test_a_different_architecture_is_refused():
    with pytest.raises(InterpolationError, match="finetuned from"):
        Interpolator(make_llama(hidden=64), make_llama(hidden=32))


@pytest.mark.parametrize("text", ["", "0,2", "0.5,0.5", "a,b"])
def test_bad_alphas(text):
    with pytest.raises(InterpolationError, match="--alphas"):
        parse_alphas(text)


def test_eval_interpolate_end_to_end(capsys, reversal_dir, tmp_path):
    from test_cli import SMALL, TINY

    assert main(["train", TINY, f"data.dir={reversal_dir}", f"train.output_dir={tmp_path}", *SMALL]) == 0
    capsys.readouterr()
    model = str(tmp_path / "model")
    code = main(
        [
            "eval",
            "--model",
            model,
            "--interpolate",
            model,
            "--alphas",
            "0,1",
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
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "alpha=0:" in out and "| alpha=1 |" in out
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert set(report) == {"alpha=0", "alpha=1"}
    # the model with itself: every alpha gives the same scores
    assert report["alpha=0"]["splits"] == report["alpha=1"]["splits"]
    assert report["alpha=1"]["retention"]["knowledge_n"] > 0
    assert (tmp_path / "ev" / "frontier.png").stat().st_size > 1000
    code = main(["eval", "--model", model, "--interpolate", model, "--alphas", "2"])
    assert code == 2 and "--alphas" in capsys.readouterr().err
