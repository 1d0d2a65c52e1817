"""bico_kernels' PyTorch reference against a direct float64 construction: a dense bool mask written
element by element from lo/hi, and mirrored RoPE written with explicit D x D rotation matrices."""

import subprocess
import sys

import pytest
import torch

from bico_kernels import (
    classify_blocks,
    mirror_rotate,
    mirror_rotate_transpose,
    reference_masked_attention,
    rotate_half,
)


def rope_angles(pos, D, base=10000.0):
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    return pos.to(torch.float64)[..., None] * inv  # [B, T, D/2]


def hf_tables(pos, D):
    emb = torch.cat([rope_angles(pos, D)] * 2, dim=-1)
    return emb.cos(), emb.sin()


def rotation_matrices(angles):
    """[..., D/2] angles -> [..., D, D] matrices acting like HF RoPE on the pairs (a, a + D/2)."""
    h = angles.shape[-1]
    R = torch.zeros(*angles.shape[:-1], 2 * h, 2 * h, dtype=torch.float64)
    a = torch.arange(h)
    R[..., a, a] = angles.cos()
    R[..., a, a + h] = -angles.sin()
    R[..., a + h, a] = angles.sin()
    R[..., a + h, a + h] = angles.cos()
    return R


def dense_attention(q, k, v, lo, hi, pos=None, scale=None):
    """Straight from the definition, with explicit loops for the mask and the mirror choice."""
    B, Hq, T, D = q.shape
    group = Hq // k.shape[1]
    scale = D**-0.5 if scale is None else scale
    if pos is not None:
        Rm = rotation_matrices(-2 * rope_angles(pos, D))  # R_{-2 theta} per token
        qm = torch.einsum("btde,bhte->bhtd", Rm, q)
        km = torch.einsum("btde,bhte->bhtd", Rm, k)
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(Hq):
            hk = h // group
            for i in range(T):
                keys = [j for j in range(T) if lo[b, j] <= i < hi[b, j]]
                if not keys:
                    continue  # no visible key: row stays 0
                s = torch.stack(
                    [
                        (qm[b, h, i] @ km[b, hk, j] if pos is not None and j > i else q[b, h, i] @ k[b, hk, j]) * scale
                        for j in keys
                    ]
                )
                p = torch.exp(s - s.max())
                p = p / p.sum()
                out[b, h, i] = sum(p[n] * v[b, hk, j] for n, j in enumerate(keys))
    return out


def random_case(B, Hq, Hkv, T, D, g):
    q, k, v = (torch.randn(B, h, T, D, generator=g, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    lo = torch.randint(0, T, (B, T), generator=g, dtype=torch.int32)
    hi = torch.randint(0, T + 1, (B, T), generator=g, dtype=torch.int32)
    lo[:, 0], hi[:, 0] = 0, T  # most rows see something ...
    hi[:, 1:] = torch.minimum(hi[:, 1:], torch.tensor(T - 2, dtype=torch.int32))  # ... the last two see only key 0
    hi[1, 0] = T - 2  # ... and in batch 1 they see nothing at all
    pos = torch.randint(0, 50, (B, T), generator=g)
    return q, k, v, lo, hi, pos


@pytest.mark.parametrize("mirror", [False, True], ids=["rope", "mirror"])
@pytest.mark.parametrize("Hq,Hkv,D", [(2, 2, 8), (6, 2, 6), (4, 1, 10)])
def test_reference_matches_dense_construction(Hq, Hkv, D, mirror):
    g = torch.Generator().manual_seed(Hq * 10 + D + mirror)
    B, T = 2, 9
    q, k, v, lo, hi, pos = random_case(B, Hq, Hkv, T, D, g)
    tables = hf_tables(pos, D) if mirror else None
    out = reference_masked_attention(q, k, v, lo, hi, mirror_rope=tables)
    want = dense_attention(q, k, v, lo, hi, pos if mirror else None)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    assert (out[1, :, T - 2 :] == 0).all() and out[0, :, T - 2 :].abs().sum() > 0
    # Gradients too: autograd through the reference vs through the dense construction.
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    ins2 = [t.clone().requires_grad_() for t in (q, k, v)]
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    g1 = torch.autograd.grad((reference_masked_attention(*ins, lo, hi, mirror_rope=tables) * w).sum(), ins)
    g2 = torch.autograd.grad((dense_attention(*ins2, lo, hi, pos if mirror else None) * w).sum(), ins2)
    for a, b in zip(g1, g2):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_reference_gradcheck_with_empty_rows_and_mirror():
    g = torch.Generator().manual_seed(1)
    q, k, v, lo, hi, pos = random_case(2, 2, 1, 6, 4, g)
    tables = hf_tables(pos, 4)
    ins = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: reference_masked_attention(a, b, c, lo, hi, mirror_rope=tables), ins
    )


def test_mirror_rotate_is_rotation_by_minus_two_theta():
    g = torch.Generator().manual_seed(2)
    B, H, T, D = 2, 3, 5, 8
    pos = torch.randint(0, 100, (B, T), generator=g)
    raw = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    cos, sin = hf_tables(pos, D)
    roped = raw * cos[:, None] + rotate_half(raw) * sin[:, None]  # what HF hands over
    R = rotation_matrices(rope_angles(pos, D))
    torch.testing.assert_close(roped, torch.einsum("btde,bhte->bhtd", R, raw), rtol=0, atol=1e-12)
    back = rotation_matrices(-rope_angles(pos, D))  # R_{-theta} raw = R_{-2 theta} roped
    torch.testing.assert_close(
        mirror_rotate(roped, cos, sin), torch.einsum("btde,bhte->bhtd", back, raw), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        mirror_rotate_transpose(mirror_rotate(roped, cos, sin), cos, sin), roped, rtol=0, atol=1e-12
    )
    assert (mirror_rotate(roped, cos, sin) - roped).abs().max() > 0.1


@pytest.mark.parametrize("mirror", [False, True])
def test_mirrored_rope_sees_distance_not_direction(mirror):
    # Same raw query/key vector at every position, bidirectional mask: with mirroring a key d tokens
    # ahead gets exactly the weight of a key d tokens behind; plain RoPE tells them apart.
    g = torch.Generator().manual_seed(3)
    T, D = 12, 16
    pos = torch.arange(T).expand(1, T)
    cos, sin = hf_tables(pos, D)
    u, w = torch.randn(2, D, generator=g, dtype=torch.float64)
    rope = lambda x: x * cos[:, None] + rotate_half(x) * sin[:, None]  # noqa: E731
    q = rope(u.expand(1, 1, T, D))
    k = rope(w.expand(1, 1, T, D))
    v = torch.eye(T, dtype=torch.float64).expand(1, 1, T, T)  # output row i = attention weights of row i
    lo, hi = torch.zeros(1, T, dtype=torch.int32), torch.full((1, T), T, dtype=torch.int32)
    p = reference_masked_attention(q, k, v, lo, hi, mirror_rope=(cos, sin) if mirror else None)[0, 0]
    i = T // 2
    ahead, behind = p[i, i + 1 : i + 6], p[i, i - 5 : i].flip(0)
    if mirror:
        torch.testing.assert_close(ahead, behind, rtol=1e-12, atol=0)
    else:
        assert (ahead - behind).abs().max() > 1e-3


def test_causal_and_bidirectional_differ_and_gqa_shares_kv():
    g = torch.Generator().manual_seed(4)
    B, T, D = 1, 7, 8
    q = torch.randn(B, 4, T, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, 2, T, D, generator=g, dtype=torch.float64) for _ in range(2))
    j = torch.arange(T, dtype=torch.int32).expand(B, T)
    full = torch.full((B, T), T, dtype=torch.int32)
    causal = reference_masked_attention(q, k, v, j, full)
    bi = reference_masked_attention(q, k, v, 0 * j, full)
    assert (causal - bi).abs().max() > 1e-2
    torch.testing.assert_close(causal[:, :, -1], bi[:, :, -1])  # the last row sees everything either way
    # Query heads 0, 1 use kv head 0; heads 2, 3 use kv head 1.
    same = reference_masked_attention(q[:, 2:3], k[:, 1:2], v[:, 1:2], j, full)
    torch.testing.assert_close(causal[:, 2:3], same, rtol=0, atol=0)


def test_low_precision_reference_keeps_dtype():
    g = torch.Generator().manual_seed(5)
    q, k, v, lo, hi, pos = random_case(2, 2, 1, 9, 8, g)
    cos, sin = hf_tables(pos, 8)
    out = reference_masked_attention(
        q.bfloat16(), k.bfloat16(), v.bfloat16(), lo, hi, mirror_rope=(cos.float(), sin.float())
    )
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ref = reference_masked_attention(q, k, v, lo, hi, mirror_rope=(cos, sin))
    assert (out.double() - ref).abs().max() < 0.1


def test_classify_blocks_needs_no_triton_and_counts():
    T = 20
    lo = torch.arange(T, dtype=torch.int32).expand(1, T)
    blk = classify_blocks(lo, torch.full((1, T), T, dtype=torch.int32), 8, 8)
    assert blk.cls.tolist() == [[[1, 0, 0], [2, 1, 0], [2, 2, 1]]]  # causal: diagonal PARTIAL, below FULL
    assert blk.kv_count.tolist() == [[1, 2, 3]] and blk.m_order.tolist() == [[2, 1, 0]]


def test_package_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch, bico_kernels as bk\n"
        "assert not bk.triton_available()\n"
        "q = torch.randn(1, 1, 4, 8)\n"
        "lo, hi = torch.zeros(1, 4, dtype=torch.int32), torch.full((1, 4), 4, dtype=torch.int32)\n"
        "assert bk.reference_masked_attention(q, q, q, lo, hi).shape == q.shape\n"
        "try:\n    bk.masked_attention(q, q, q, lo, hi)\nexcept ImportError:\n    pass\n"
        "else:\n    raise SystemExit('masked_attention ran without triton')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
