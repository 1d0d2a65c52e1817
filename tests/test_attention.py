"""The "bico" attention: exact SDPA equivalence without a mask, bidirectionality with one
(every code path, batch size 1, padding), no leaks between packed documents, mirrored RoPE
against a direct float64 construction; bico.apply / revert and the architecture check."""

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import bico
from bico import IntervalMask
from bico.attention import rope_tables, rotary_embedding
from bico_kernels import reference_masked_attention
from helpers import make_llama, twin_models


def reference_interval_attention(q, k, v, lo, hi, *, scale, mirror_rope=None):
    """The reference as the bico attention calls it on CPU (SDPA branch without the mirror)."""
    return reference_masked_attention(
        q, k, v, lo, hi, scale=scale, mirror_rope=mirror_rope, use_sdpa=mirror_rope is None
    )


def model_rope_tables(model, pos):
    return rope_tables(rotary_embedding(model.model.layers[0].self_attn), pos)


def _triton_ok():
    import bico_kernels

    return bico_kernels.triton_available()


needs_triton = pytest.mark.skipif(not _triton_ok(), reason="triton not installed (or no interpreter/GPU)")
PATHS = [
    pytest.param(("reference", False), id="reference"),
    pytest.param(("reference", True), id="reference-mirror"),
    pytest.param(("triton", False), id="triton", marks=needs_triton),
    pytest.param(("triton", True), id="triton-mirror", marks=needs_triton),
]


def _forward(model, ids, mask, backend, mirror, pos=None):
    pos = pos if pos is not None else torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    bico.apply(model, backend=backend)
    mask = mask.with_rope("mirrored") if mirror else mask
    return model(ids, bico_mask=mask, position_ids=pos).logits


def test_without_intervals_equals_sdpa_with_and_without_padding():
    bico_model, sdpa_model = twin_models()
    ids = torch.randint(0, 128, (3, 11))
    with torch.no_grad():
        assert torch.allclose(bico_model(ids).logits, sdpa_model(ids).logits, atol=1e-5, rtol=0)
        mask = torch.ones(3, 11, dtype=torch.long)
        mask[1, :4] = 0
        mask[2, :1] = 0
        a = bico_model(ids, attention_mask=mask).logits
        b = sdpa_model(ids, attention_mask=mask).logits
    assert torch.allclose(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=0)


def test_generate_matches_sdpa():
    bico_model, sdpa_model = twin_models()
    ids = torch.randint(0, 128, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    a = bico_model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    b = sdpa_model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_causal_intervals_equal_causal_attention(path):
    backend, mirror = path
    bico_model, sdpa_model = twin_models()
    ids = torch.randint(0, 128, (2, 9))
    mask = IntervalMask.stack([IntervalMask.causal(9)] * 2)
    with torch.no_grad():
        # Mirroring changes nothing under a causal mask: no key is ever after its query.
        got = _forward(bico_model, ids, mask, backend, mirror)
        assert torch.allclose(got, sdpa_model(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("padded", [False, True])
def test_bidirectionality_takes_effect_at_batch_size_1(path, padded):
    backend, mirror = path
    model = make_llama()
    t, n = 10, (7 if padded else 10)
    ids = torch.randint(0, 128, (1, t))
    mask = IntervalMask.bidirectional(n).pad(t, "left" if padded else "right")
    first = t - n  # first real token
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 128  # perturb the last real token
    with torch.no_grad():
        a = _forward(model, ids, mask, backend, mirror)
        b = _forward(model, changed, mask, backend, mirror)
        # The first real token sees the future under a bidirectional mask ...
        assert (a[0, first] - b[0, first]).abs().max() > 1e-4
        # ... and not under a causal one (guards the test itself).
        causal = IntervalMask.causal(n).pad(t, "left" if padded else "right")
        c = _forward(model, ids, causal, backend, mirror)
        d = _forward(model, changed, causal, backend, mirror)
        assert torch.allclose(c[0, first], d[0, first], atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
def test_packed_documents_never_leak(path, kind):
    backend, mirror = path
    model = make_llama()
    builder = getattr(IntervalMask, kind)
    mask = IntervalMask.concat([builder(6), builder(5), IntervalMask.hidden(2)])
    pos = torch.cat([torch.arange(6), torch.arange(5), torch.zeros(2, dtype=torch.long)])[None]
    ids = torch.randint(0, 128, (1, 13))
    changed = ids.clone()
    changed[0, 6:11] = (ids[0, 6:11] + 7) % 128  # rewrite document 2 entirely
    with torch.no_grad():
        a = _forward(model, ids, mask, backend, mirror, pos)
        b = _forward(model, changed, mask, backend, mirror, pos)
    assert torch.allclose(a[0, :6], b[0, :6], atol=1e-6)  # document 1 unchanged
    assert (a[0, 6:11] - b[0, 6:11]).abs().max() > 1e-3


def _rotation(theta: torch.Tensor, d: int) -> torch.Tensor:
    """The RoPE rotation matrix (rotate-half layout) for angles theta [d/2], float64."""
    r = torch.zeros(d, d, dtype=torch.float64)
    h = d // 2
    for k in range(h):
        c, s = math.cos(theta[k]), math.sin(theta[k])
        r[k, k], r[k, k + h], r[k + h, k], r[k + h, k + h] = c, -s, s, c
    return r


def test_mirrored_rope_matches_direct_float64_construction():
    torch.manual_seed(0)
    b, hq, hkv, t, d = 2, 4, 2, 9, 16
    model = make_llama(hidden=64, heads=4, kv_heads=2)  # head_dim 16
    pos = torch.stack([torch.arange(t), torch.arange(3, 3 + t)])
    raw_q = torch.randn(b, hq, t, d, dtype=torch.float64)
    raw_k = torch.randn(b, hkv, t, d, dtype=torch.float64)
    v = torch.randn(b, hkv, t, d, dtype=torch.float64)
    inv_freq = model.model.rotary_emb.inv_freq.double()
    angles = pos[..., None].double() * inv_freq
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    model_cos, model_sin = model_rope_tables(model, pos)  # the model's own fp32 tables agree
    assert torch.allclose(model_cos.double(), cos, atol=1e-5) and torch.allclose(model_sin.double(), sin, atol=1e-5)
    q, k = apply_rotary_pos_emb(raw_q, raw_k, cos, sin)
    mask = IntervalMask.stack([IntervalMask.bico(t, torch.rand(t) < 0.3) for _ in range(b)])
    lo, hi = mask.lo, mask.hi
    got = reference_interval_attention(q, k, v, lo, hi, scale=d**-0.5, mirror_rope=(cos, sin))

    allowed = mask.dense()
    expected = torch.zeros_like(got)
    for bi in range(b):
        rot = [_rotation(pos[bi, i] * inv_freq, d) for i in range(t)]
        for h in range(hq):
            kv = h // (hq // hkv)
            scores = torch.full((t, t), -math.inf, dtype=torch.float64)
            for i in range(t):
                for j in range(t):
                    if not allowed[bi, i, j]:
                        continue
                    if j <= i:  # ordinary RoPE: (R_i q)·(R_j k)
                        s = (rot[i] @ raw_q[bi, h, i]) @ (rot[j] @ raw_k[bi, kv, j])
                    else:  # mirrored: (R_{-i} q)·(R_{-j} k), the offset's sign flipped
                        s = (rot[i].T @ raw_q[bi, h, i]) @ (rot[j].T @ raw_k[bi, kv, j])
                    scores[i, j] = s * d**-0.5
            probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
            expected[bi, h] = probs @ v[bi, kv]
    assert torch.allclose(got, expected, atol=1e-10)
    # The mirrored scores really differ from plain RoPE on keys after the query.
    plain = reference_interval_attention(q, k, v, lo, hi, scale=d**-0.5)
    assert (plain - got).abs().max() > 1e-3


def test_rows_without_keys_output_zero_and_no_nan():
    q = torch.randn(1, 2, 5, 8, requires_grad=True)
    k = torch.randn(1, 2, 5, 8, requires_grad=True)
    v = torch.randn(1, 2, 5, 8, requires_grad=True)
    lo = torch.tensor([[2, 2, 0, 0, 0]], dtype=torch.int32)  # rows 0, 1 see nothing
    hi = torch.tensor([[5, 5, 0, 0, 0]], dtype=torch.int32)
    out = reference_interval_attention(q, k, v, lo, hi, scale=8**-0.5)
    assert torch.equal(out[:, :, :2], torch.zeros_like(out[:, :, :2]))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("rope", ["standard", "mirrored"])
def test_cpu_autocast_runs_the_masked_attention_in_fp32(rope):
    """Under bf16 autocast on CPU the attention itself runs in fp32 (faster there than bf16, and
    closer to the reference): the model's logits equal those of the fp32 attention on the same
    bf16 projections, to bf16's rounding of the layers around it, and the mask still acts."""
    model = make_llama("bico")
    ids = torch.randint(3, 128, (1, 11))
    mask = IntervalMask.bidirectional(11, rope=rope)
    seen = []
    real = bico.attention.reference_masked_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return real(q, k, v, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bico.attention, "reference_masked_attention", spy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids, bico_mask=mask).logits
    assert seen and all(s == (torch.float32, torch.float32, torch.float32, False) for s in seen), seen
    exact = model(input_ids=ids, bico_mask=mask).logits
    causal = model(input_ids=ids, bico_mask=IntervalMask.causal(11, rope=rope)).logits
    assert (logits.float() - exact).abs().max() < 0.1 * (causal - exact).abs().max()


def test_mask_errors(monkeypatch):
    model = make_llama()
    ids = torch.randint(0, 128, (1, 4))
    with pytest.raises(TypeError, match="IntervalMask"):
        model(ids, bico_mask=(torch.zeros(1, 4), torch.ones(1, 4)))
    with pytest.raises(ValueError, match="without a KV cache"):
        model(ids, bico_mask=IntervalMask.causal(5))
    with pytest.raises(ValueError, match="backend"):
        bico.apply(model, backend="nope")
    monkeypatch.setenv("BICO_ATTENTION_BACKEND", "nope")
    with pytest.raises(ValueError, match="BACKEND 'nope'"):
        model(ids, bico_mask=IntervalMask.causal(4))


def test_rope_2d_splits_the_head_dimension_between_two_positions():
    from bico.attention import rope_2d_tables, rotate

    model = make_llama(hidden=64, heads=4, kv_heads=2)  # head_dim 16: 8 frequency pairs
    rotary = rotary_embedding(model.model.layers[0].self_attn)
    t = 7
    pos = torch.tensor([[0, 1, 2, 3, 3, 3, 3]])
    block = torch.tensor([[0, 0, 0, 0, 1, 2, 3]])
    raw = torch.randn(1, 1, t, 16)
    cos1, sin1 = rope_tables(rotary, pos)
    once = rotate(raw, cos1, sin1)  # what the model does
    two_d = rotate(once, *rope_2d_tables(rotary, pos, block))
    cos_b, sin_b = rope_tables(rotary, block)
    direct = rotate(raw, cos_b, sin_b)
    lower = torch.tensor([k % 8 < 4 for k in range(16)])  # pairs 0..3 keep the 1-D position
    assert torch.allclose(two_d[..., lower], once[..., lower], atol=1e-5)
    assert torch.allclose(two_d[..., ~lower], direct[..., ~lower], atol=1e-5)
    same = rotate(once, *rope_2d_tables(rotary, pos, pos))
    assert torch.allclose(same, once, atol=1e-6)


@needs_triton
@pytest.mark.parametrize("mirror", [False, True])
def test_model_loss_and_gradients_through_kernel_equal_reference(mirror):
    """A tiny Llama: same loss and parameter gradients via the Triton kernel and the reference."""
    model = make_llama(hidden=128, heads=4, kv_heads=2)  # head_dim 32, a kernel size
    model.train()
    torch.manual_seed(1)
    ids = torch.randint(0, 128, (2, 19))
    hidden = torch.rand(2, 19) < 0.2
    mask = IntervalMask.stack([IntervalMask.bico(19, hidden[0]), IntervalMask.prefix_lm(14, 5).pad(19)])
    grads = {}
    for backend in ("reference", "triton"):
        model.zero_grad()
        logits = _forward(model, ids, mask, backend, mirror)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
        loss.backward()
        grads[backend] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (l_ref, g_ref), (l_tri, g_tri) = grads["reference"], grads["triton"]
    assert torch.allclose(l_ref, l_tri, atol=1e-5)
    for name in g_ref:
        assert torch.allclose(g_ref[name], g_tri[name], atol=1e-4, rtol=1e-3), name


def _tiny(model_type: str, attn: str = "sdpa"):
    """A tiny random model of another Llama-family architecture."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_apply_switches_a_loaded_model_and_revert_restores_it(model_type):
    model, stock = _tiny(model_type), _tiny(model_type)
    ids = torch.randint(0, 128, (2, 9))
    assert bico.apply(model) is model and model.config._attn_implementation == "bico"
    with torch.no_grad():
        # Without a mask: stock SDPA, logits and greedy tokens.
        assert torch.allclose(model(ids).logits, stock(ids).logits, atol=1e-5, rtol=0)
        assert torch.equal(
            model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0),
            stock.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0),
        )
        # With one: bidirectional attention takes effect, mirrored RoPE too.
        full = IntervalMask.stack([IntervalMask.bidirectional(9)] * 2)
        bidir = model(ids, bico_mask=full).logits
        assert (bidir - stock(ids).logits)[:, :-1].abs().max() > 1e-4
        assert (model(ids, bico_mask=full.with_rope("mirrored")).logits - bidir).abs().max() > 1e-5
    # The tables the attention builds equal the model's own rotary embedding's.
    pos = torch.arange(9)[None]
    own = model.model.rotary_emb(torch.empty(0), pos)
    built = rope_tables(rotary_embedding(model.model.layers[0].self_attn), pos)
    assert all(torch.equal(a, b) for a, b in zip(own, built))
    assert bico.revert(model) is model and model.config._attn_implementation == "sdpa"


def test_apply_works_through_peft_and_sees_the_mask():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_llama("sdpa"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    bico.apply(model, backend="reference")
    ids = torch.randint(0, 128, (1, 7))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 128
    with torch.no_grad():
        a = model(input_ids=ids, bico_mask=IntervalMask.bidirectional(7)).logits
        b = model(input_ids=changed, bico_mask=IntervalMask.bidirectional(7)).logits
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4


def test_unsupported_architecture_is_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    from bico.attention import UnsupportedModelError

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(UnsupportedModelError, match="supports model types llama, mistral, qwen2.*'gpt2'"):
        bico.apply(gpt2)


def test_training_refuses_a_model_that_would_ignore_the_mask():
    from bico.attention import UnsupportedModelError, require_bico

    require_bico(make_llama("bico"))
    with pytest.raises(UnsupportedModelError, match="ignores bico_mask.*bico.apply"):
        require_bico(make_llama("sdpa"))


@needs_triton
def test_one_classification_per_forward_and_backward_shared_by_every_layer(monkeypatch):
    import bico_kernels

    calls = []
    real = bico_kernels.classify_blocks
    monkeypatch.setattr(bico_kernels, "classify_blocks", lambda *a: calls.append(a[2:]) or real(*a))
    model = make_llama(hidden=128, heads=4, kv_heads=2, layers=3)  # head_dim 32
    bico.apply(model, backend="triton")
    mask = IntervalMask.stack([IntervalMask.bico(21, torch.rand(21) < 0.2, rope="mirrored")] * 2)
    loss = model(torch.randint(0, 128, (2, 21)), bico_mask=mask).logits.float().pow(2).mean()
    loss.backward()
    # Three layers, forward and backward: one classification per tile size used.
    assert len(calls) == len(set(calls)) >= 1 and set(mask._blocks) == set(calls)


REGISTRATION_PROBE = """
import json, sys
import bico
loaded = "torch" in sys.modules
from transformers import AttentionInterface, AttentionMaskInterface
before = "bico" in AttentionInterface() or "bico" in AttentionMaskInterface()
bico.register()
bico.register()  # idempotent
after = "bico" in AttentionInterface() and "bico" in AttentionMaskInterface()
print(json.dumps([loaded, before, after, AttentionInterface()["bico"].__name__]))
"""


@pytest.mark.parametrize("how", ["-c", "-m", "script named bico"])
def test_import_bico_registers_nothing_however_the_process_started(how, tmp_path):
    """``import bico`` neither loads torch nor registers the attention, whether started by ``python -c``,
    ``python -m`` or a script called ``bico`` (the console script); ``bico.register()`` does, once."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "probe.py").write_text(REGISTRATION_PROBE)
    (tmp_path / "bico").write_text(REGISTRATION_PROBE)
    argv = {"-c": ["-c", REGISTRATION_PROBE], "-m": ["-m", "probe"], "script named bico": [str(tmp_path / "bico")]}[how]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, False, True, "bico_attention_forward"]


def test_apply_and_model_loading_register(monkeypatch):
    """The two ways a model reaches bico's attention register it themselves (no import side effect to rely on)."""
    import bico.attention as A
    import bico.models as M
    from bico.config import ModelConfig

    calls = []
    monkeypatch.setattr(A, "register", lambda: calls.append("register"))
    monkeypatch.setattr(M, "register_attention", A.register)
    M.load_model(ModelConfig(name="tiny-random", layers=1, hidden_size=32, heads=2, kv_heads=1, intermediate_size=64))
    bico.apply(make_llama("sdpa"))
    assert calls == ["register", "register"]
