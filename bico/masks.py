"""Attention masks as column intervals: :class:`IntervalMask`, the one object that flows from an
objective through ``collate`` to the model (``model(..., bico_mask=mask)``).

A mask of a sequence of length T is two int32 vectors ``lo``, ``hi``: query row ``i`` may see key
``j`` iff ``lo[j] <= i < hi[j]``. An empty range (``lo >= hi``) hides key ``j`` from everyone
(padding, BICO's masked tokens). Every mask bico uses (causal, bidirectional, prefix-LM, GLM,
packed documents) is of this form, costs O(T) memory instead of O(T^2), and lets the fused
kernel classify whole tiles from per-block min/max.

The mask also carries how attention applies RoPE, because that is part of what the objective
decides: ``"standard"`` (the model's own RoPE), ``"mirrored"`` (BICO: keys after the query are
scored with the relative offset's sign flipped) or ``"2d"`` (GLM's 2-D positions: the upper half of
the frequency pairs rotates by ``block_position_ids`` instead of the position). The attention builds
the tables itself from the model's rotary embedding.

Masks are always batched, ``[B, T]``; the constructors build one sequence (B = 1). ``concat``
packs sequences along T (each keeps its own mask and sees nothing outside), ``stack`` batches
equal-length masks along B. The kernel's tile classification is computed once per tile size and
cached on the object (:meth:`IntervalMask.blocks`), so every layer of a forward and the backward
share it. For debugging: :meth:`~IntervalMask.to_string` (an ASCII picture), :meth:`~IntervalMask.sparsity`
and :meth:`~IntervalMask.visible_pairs`, and a ``repr`` with the cached tile classification.
"""

from __future__ import annotations

from typing import Sequence

import torch

INDEX_DTYPE = torch.int32
ROPE_MODES = ("standard", "mirrored", "2d")


class IntervalMask:
    """``lo``, ``hi``: int32 ``[B, T]``; ``rope``: one of :data:`ROPE_MODES`;
    ``block_position_ids``: int64 ``[B, T]``, only (and always) with ``rope="2d"``."""

    def __init__(
        self, lo: torch.Tensor, hi: torch.Tensor, rope: str = "standard", block_position_ids: torch.Tensor | None = None
    ):
        if lo.dim() == 1:
            lo, hi = lo[None], hi[None]
        if lo.dim() != 2 or lo.shape != hi.shape:
            raise ValueError(f"lo and hi must both be [B, T], got {tuple(lo.shape)} and {tuple(hi.shape)}")
        if rope not in ROPE_MODES:
            raise ValueError(f"rope {rope!r}: use one of {', '.join(ROPE_MODES)}")
        if (rope == "2d") != (block_position_ids is not None):
            raise ValueError("block_position_ids go with rope='2d', and only with it")
        if block_position_ids is not None:
            if block_position_ids.dim() == 1:
                block_position_ids = block_position_ids[None]
            if block_position_ids.shape != lo.shape:
                raise ValueError(
                    f"block_position_ids {tuple(block_position_ids.shape)} do not match lo {tuple(lo.shape)}"
                )
            block_position_ids = block_position_ids.to(device=lo.device, dtype=torch.long)
        self.lo, self.hi = lo.to(INDEX_DTYPE), hi.to(device=lo.device, dtype=INDEX_DTYPE)
        self.rope = rope
        self.block_position_ids = block_position_ids
        self._blocks: dict = {}  # (block_m, block_n) -> the kernel's tile classification
        self._copies: dict = {}  # device -> this mask on that device (so its caches are shared)
        self.rope_cache: dict = {}  # the attention's RoPE tables for this mask (see bico.attention)

    # --- constructors (one sequence) ---------------------------------------------------------
    @classmethod
    def causal(cls, length: int, rope: str = "standard") -> IntervalMask:
        """Key j is seen by rows j..T-1."""
        return cls(torch.arange(length, dtype=INDEX_DTYPE), _full(length, length), rope, _zeros_if_2d(rope, length))

    @classmethod
    def bidirectional(cls, length: int, rope: str = "standard") -> IntervalMask:
        """Every row sees every key."""
        return cls(_full(length, 0), _full(length, length), rope, _zeros_if_2d(rope, length))

    @classmethod
    def prefix_lm(cls, length: int, prefix_length: int, rope: str = "standard") -> IntervalMask:
        """Bidirectional over the first ``prefix_length`` tokens, causal after them."""
        if not 0 <= prefix_length <= length:
            raise ValueError(f"prefix_length {prefix_length} outside [0, {length}]")
        lo = torch.arange(length, dtype=INDEX_DTYPE)
        lo[:prefix_length] = 0
        return cls(lo, _full(length, length), rope, _zeros_if_2d(rope, length))

    @classmethod
    def isolated_blocks(
        cls, length: int, prefix_length: int, blocks: Sequence[tuple[int, int]], rope: str = "standard"
    ) -> IntervalMask:
        """:meth:`prefix_lm`, except that each block ``[start, end)`` after the prefix is seen by its
        own later rows only (GLM's ``isolated_spans``: a span sees Part A and itself)."""
        if not 0 <= prefix_length <= length:
            raise ValueError(f"prefix_length {prefix_length} outside [0, {length}]")
        lo = torch.arange(length, dtype=INDEX_DTYPE)
        lo[:prefix_length] = 0
        hi = _full(length, length)
        for start, end in blocks:
            if not prefix_length <= start <= end <= length:
                raise ValueError(f"block [{start}, {end}) outside [{prefix_length}, {length})")
            hi[start:end] = end
        return cls(lo, hi, rope, _zeros_if_2d(rope, length))

    @classmethod
    def block_diffusion(cls, block_lengths: Sequence[int], rope: str = "standard") -> IntervalMask:
        """BD3LM's attention in the layout ``[noisy_0, clean_0, noisy_1, clean_1, ..., noisy_{B-1}]``
        (blocks of ``block_lengths`` tokens; no clean copy of the last block). A noisy block's keys
        are seen by that block only; a clean block's keys by every row from it to the end (clean
        blocks b' >= b, noisy blocks b' > b). See :mod:`bico.objectives.bd3lm` for why that is all."""
        lo, hi, start = [], [], 0
        total = 2 * sum(block_lengths) - (block_lengths[-1] if block_lengths else 0)
        for k, n in enumerate(block_lengths):
            lo += [start] * n
            hi += [start + n] * n  # noisy_k
            start += n
            if k < len(block_lengths) - 1:
                lo += [start] * n
                hi += [total] * n  # clean_k
                start += n
        return cls(
            torch.tensor(lo, dtype=INDEX_DTYPE), torch.tensor(hi, dtype=INDEX_DTYPE), rope, _zeros_if_2d(rope, total)
        )

    @classmethod
    def bico(cls, length: int, hidden: torch.Tensor, rope: str = "standard") -> IntervalMask:
        """BICO's denoising mask: bidirectional, with the ``hidden`` positions hidden as keys."""
        return cls.bidirectional(length, rope).hide(hidden)

    @classmethod
    def hidden(cls, length: int, rope: str = "standard") -> IntervalMask:
        """``length`` keys that nobody sees (padding)."""
        return cls(_full(length, 0), _full(length, 0), rope, _zeros_if_2d(rope, length))

    @classmethod
    def concat(cls, masks: Sequence[IntervalMask]) -> IntervalMask:
        """Pack sequences along T: each keeps its own mask and sees nothing outside its slot."""
        if not masks:
            raise ValueError("concat needs at least one mask")
        rope = _common_rope(masks, "packs")
        if len({m.batch_size for m in masks}) > 1:
            raise ValueError("concat: masks of different batch sizes")
        los, his, offset = [], [], 0
        for m in masks:
            empty = m.lo >= m.hi
            # Shift the row range into this sequence's slot; empty ranges stay empty (0, 0).
            los.append(torch.where(empty, 0, m.lo + offset))
            his.append(torch.where(empty, 0, m.hi + offset))
            offset += m.seq_len
        blocks = torch.cat([m.block_position_ids for m in masks], 1) if rope == "2d" else None
        return cls(torch.cat(los, 1), torch.cat(his, 1), rope, blocks)

    @classmethod
    def stack(cls, masks: Sequence[IntervalMask]) -> IntervalMask:
        """Batch equal-length masks along B."""
        if not masks:
            raise ValueError("stack needs at least one mask")
        rope = _common_rope(masks, "batches")
        if len({m.seq_len for m in masks}) > 1:
            raise ValueError(f"stack: masks of different lengths {sorted({m.seq_len for m in masks})}; pad them first")
        blocks = torch.cat([m.block_position_ids for m in masks]) if rope == "2d" else None
        return cls(torch.cat([m.lo for m in masks]), torch.cat([m.hi for m in masks]), rope, blocks)

    # --- derived masks -------------------------------------------------------------------------
    def hide(self, hidden: torch.Tensor) -> IntervalMask:
        """Hide the keys where ``hidden`` ([T] or [B, T] bool) is True from every query."""
        hidden = hidden.to(device=self.lo.device, dtype=torch.bool).expand_as(self.lo)
        return IntervalMask(
            self.lo.masked_fill(hidden, 0), self.hi.masked_fill(hidden, 0), self.rope, self.block_position_ids
        )

    def pad(self, length: int, side: str = "right") -> IntervalMask:
        """Pad to ``length`` with hidden keys on ``side``."""
        if self.seq_len > length:
            raise ValueError(f"sequence of {self.seq_len} tokens does not fit in {length}")
        if side not in ("left", "right"):
            raise ValueError(f"side {side!r}: use left or right")
        filler = IntervalMask.hidden(length - self.seq_len, self.rope)
        filler = IntervalMask.stack([filler] * self.batch_size) if self.batch_size > 1 else filler
        return IntervalMask.concat([self, filler] if side == "right" else [filler, self])

    def with_rope(self, rope: str, block_position_ids: torch.Tensor | None = None) -> IntervalMask:
        """The same intervals under another RoPE mode (``"2d"`` needs ``block_position_ids``)."""
        return IntervalMask(self.lo, self.hi, rope, block_position_ids)

    def to(self, device) -> IntervalMask:
        """This mask on ``device``; the copy is kept, so its caches are reused on the next call."""
        device = torch.device(device)
        if self.lo.device == device:
            return self
        key = str(device)
        if key not in self._copies:
            bp = None if self.block_position_ids is None else self.block_position_ids.to(device)
            self._copies[key] = IntervalMask(self.lo.to(device), self.hi.to(device), self.rope, bp)
        return self._copies[key]

    # --- views -------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.lo.shape[0]

    @property
    def seq_len(self) -> int:
        return self.lo.shape[1]

    @property
    def device(self) -> torch.device:
        return self.lo.device

    def __len__(self) -> int:
        return self.seq_len

    def __getitem__(self, row: int) -> IntervalMask:
        """Batch row ``row`` as a mask of its own (B = 1)."""
        bp = None if self.block_position_ids is None else self.block_position_ids[row : row + 1]
        return IntervalMask(self.lo[row : row + 1], self.hi[row : row + 1], self.rope, bp)

    def dense(self) -> torch.Tensor:
        """Bool ``[B, T, T]`` indexed (batch, query, key); True = may attend."""
        from bico_kernels import dense_visibility

        return dense_visibility(self.lo, self.hi)

    def blocks(self, block_m: int, block_n: int):
        """The kernel's tile classification for this tile size, computed once and kept."""
        key = (block_m, block_n)
        if key not in self._blocks:
            from bico_kernels import classify_blocks

            self._blocks[key] = classify_blocks(self.lo, self.hi, block_m, block_n)
        return self._blocks[key]

    def __eq__(self, other) -> bool:
        if not isinstance(other, IntervalMask):
            return NotImplemented
        same_bp = (self.block_position_ids is None and other.block_position_ids is None) or (
            self.block_position_ids is not None
            and other.block_position_ids is not None
            and torch.equal(self.block_position_ids, other.block_position_ids)
        )
        return (
            self.rope == other.rope
            and self.lo.shape == other.lo.shape
            and torch.equal(self.lo, other.lo)
            and torch.equal(self.hi, other.hi)
            and same_bp
        )

    __hash__ = None  # mutable tensors inside: not hashable

    # --- debugging aids: pair counts, a picture, a readable repr ------------------------------
    def visible_pairs(self) -> int:
        """Visible (query, key) pairs over the whole batch, counted in O(B*T) without a dense mask."""
        return int(self._visible_per_row().sum())

    def sparsity(self) -> float:
        """Fraction of the batch's ``B * T * T`` (query, key) pairs that are *not* visible.

        Padding is part of the grid: a padded key is hidden from every row and a padded query row sees
        no key, so their pairs count as not visible, exactly as in ``1 - mask.dense().float().mean()``
        (the kernel's work covers the padded grid too). An empty mask (T = 0) has sparsity 0.0."""
        total = self.batch_size * self.seq_len**2
        return 1.0 - self.visible_pairs() / total if total else 0.0

    def to_string(self, batch: int = 0, max_size: int = 64) -> str:
        """An ASCII picture of batch row ``batch``: one line per query row, one character per key
        (``#`` visible, ``.`` hidden), under a header with the shape and the row's sparsity. Longer
        sequences are drawn in square tiles of ``ceil(T / max_size)`` tokens so that the picture is at
        most ``max_size`` characters wide and high: ``#`` every pair of the tile visible, ``+`` some,
        ``.`` none. Exact (not the kernel's conservative tile classification) and O(T * max_size)."""
        if not 0 <= batch < self.batch_size:
            raise ValueError(f"batch {batch} outside [0, {self.batch_size})")
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        T = self.seq_len
        pairs = int(self._visible_per_row()[batch])
        header = (
            f"IntervalMask B={self.batch_size} T={T} rope={self.rope!r}, batch row {batch}: "
            f"{pairs} of {T * T} (query, key) pairs visible, sparsity {1 - pairs / (T * T) if T else 0.0:.1%}"
        )
        tile = -(-T // max_size) if T else 1
        n = -(-T // tile)
        if tile == 1:
            legend = f"rows = queries 0..{T - 1}, columns = keys 0..{T - 1}: '#' visible, '.' hidden"
        else:
            legend = (
                f"rows = queries, columns = keys, {tile}x{tile} pairs per character: "
                "'#' all visible, '+' some, '.' none"
            )
        if not T:
            return f"{header}\n{legend}"
        lo, hi = self.lo[batch].long().cpu(), self.hi[batch].long().cpu()
        # Visible rows of key j inside row tile r: |[lo_j, hi_j) & [r0, r1)|, summed per key tile.
        r0 = torch.arange(n)[:, None] * tile
        r1 = (r0 + tile).clamp(max=T)
        seen = (torch.minimum(hi[None], r1) - torch.maximum(lo[None], r0)).clamp(min=0)  # [n, T]
        seen = torch.nn.functional.pad(seen, (0, n * tile - T)).view(n, n, tile).sum(-1)  # [row tile, key tile]
        widths = (r1 - r0).flatten()
        size = widths[:, None] * widths[None, :]  # pairs in each tile (the last ones may be smaller)
        chars = [
            ["." if c == 0 else "#" if c == full else "+" for c, full in zip(row, sizes)]
            for row, sizes in zip(seen.tolist(), size.tolist())
        ]
        return "\n".join([header, legend, *("".join(line) for line in chars)])

    def _visible_per_row(self) -> torch.Tensor:
        """Visible pairs per batch row (int64 ``[B]``): per key, the length of ``[lo, hi) & [0, T)``."""
        T = self.seq_len
        return (self.hi.long().clamp(0, T) - self.lo.long().clamp(0, T)).clamp(min=0).sum(-1)

    def __repr__(self) -> str:
        tiles = "".join(f", tiles {m}x{n}: {_tile_summary(c.cls)}" for (m, n), c in self._blocks.items())
        return (
            f"IntervalMask(B={self.batch_size}, T={self.seq_len}, rope={self.rope!r}, device={self.device}, "
            f"sparsity={self.sparsity():.3f}{tiles})"
        )

    def __getstate__(self):  # pickling (DataLoader workers): tensors only, caches are rebuilt
        return {"lo": self.lo, "hi": self.hi, "rope": self.rope, "block_position_ids": self.block_position_ids}

    def __setstate__(self, state):
        self.__init__(state["lo"], state["hi"], state["rope"], state["block_position_ids"])


def _tile_summary(cls: torch.Tensor) -> str:
    """How the kernel classified its tiles (over the whole batch): skipped, partial and full counts."""
    from bico_kernels import FULL, PARTIAL, SKIP

    counts = torch.bincount(cls.flatten().long().cpu(), minlength=3).tolist()
    return f"{counts[SKIP]} skip / {counts[PARTIAL]} partial / {counts[FULL]} full"


def _full(length: int, value: int) -> torch.Tensor:
    return torch.full((length,), value, dtype=INDEX_DTYPE)


def _zeros_if_2d(rope: str, length: int) -> torch.Tensor | None:
    # A new "2d" mask starts with block position 0 (GLM's value for every token outside a span).
    return torch.zeros(length, dtype=torch.long) if rope == "2d" else None


def _common_rope(masks: Sequence[IntervalMask], verb: str) -> str:
    modes = {m.rope for m in masks}
    if len(modes) > 1:
        raise ValueError(
            f"a batch {verb} masks with different RoPE modes {sorted(modes)}; objectives decide RoPE per batch"
        )
    return modes.pop()
