"""The sparsekit 2:4 in-memory layout, its pack/unpack, and a plain-torch matmul.

A weight ``W`` of shape ``[N, K]`` (``nn.Linear`` convention: N outputs, K inputs) is 2:4
along K when every group of 4 consecutive input columns ``W[n, 4g:4g+4]`` holds at most
2 nonzeros (``-0.0`` counts as zero). It is stored as two tensors:

``values``  ``[N, Kp/2]``, model dtype. The 2 kept values of group ``g`` sit at
            ``values[n, 2g]`` (lower column) and ``values[n, 2g+1]`` (higher column).
            This is the same order as compressed-tensors' ``compressed`` tensor, so a row is
            one contiguous stream: the kernel reads it with 16-byte vector loads and splits
            even/odd lanes in registers (no gathers, no strided loads).
``meta``    ``[N, Kp/16]``, int16. Element ``e`` of a row describes the 4 groups
            ``4e .. 4e+3``; nibble ``j`` (bits ``4j..4j+3``) belongs to group ``4e+j`` and
            holds ``i0 | i1 << 2`` with ``i0 < i1`` the in-group columns of the two kept
            values. Decoding is a shift and two masks, no lookup. The 4-group granularity
            is deliberate: a 16-byte vector of 16-bit values is exactly 4 groups, so in the
            kernel each thread's 16-byte value load pairs with exactly one meta element and
            the nibble expansion stays in the thread's registers (with 8 groups per word,
            Triton has to move the expanded indices between threads through shared memory).
            The bytes are those of a little-endian int32 word per 8 groups.

``Kp`` is K rounded up to a multiple of :data:`K_ALIGN` (64): the tail is padded with zero
values (indices ``0, 1``), which multiply against masked-out (zero) activations. Rows of
``values`` are then multiples of 64 bytes and rows of ``meta`` multiples of 8 bytes, so the
kernel can use aligned vector loads on every row.

Bytes per dense element (16-bit): 2 * (1/2) values + (4 bits / 4 elements) meta = 1.125,
i.e. 9/16 of dense, the floor for exact 2:4 with 16-bit values.

Groups with fewer than 2 nonzeros store explicit zeros in the unused slots (at the lowest
free columns, kept sorted so ``i0 < i1``). ``-0.0`` becomes ``+0.0`` on packing (``-0.0`` is
a known source of garbage in other 2:4 stacks); a round trip is otherwise exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

K_ALIGN = 64  # dense columns; keeps value rows 64-byte and meta rows 8-byte aligned


@dataclass
class Packed24:
    """Compressed 2:4 weight: ``values`` [N, Kp/2], ``meta`` int16 [N, Kp/16], dense K."""

    values: torch.Tensor
    meta: torch.Tensor
    in_features: int

    @property
    def out_features(self) -> int:
        return self.values.shape[0]

    @property
    def padded_in_features(self) -> int:
        return self.values.shape[1] * 2


def padded_k(k: int) -> int:
    return (k + K_ALIGN - 1) // K_ALIGN * K_ALIGN


def check_24(weight: torch.Tensor) -> None:
    """Raise ValueError unless ``weight`` [N, K] is exactly 2:4 along K (dim 1)."""
    if weight.dim() != 2:
        raise ValueError(f"2:4 weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if k % 4 != 0:
        raise ValueError(f"2:4 needs in_features divisible by 4, got {k}")
    nnz = (weight != 0).reshape(n, k // 4, 4).sum(-1)
    bad = nnz > 2
    if bool(bad.any()):
        count = int(bad.sum())
        row, grp = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} is not 2:4 along the input dim: "
            f"{count} group(s) of 4 input columns have more than 2 nonzeros, first at "
            f"row {row}, columns {4 * grp}..{4 * grp + 3} ({int(nnz[row, grp])} nonzeros)"
        )


def mask_24_magnitude(weight: torch.Tensor) -> torch.Tensor:
    """Boolean mask keeping the 2 largest |w| of every group of 4 along dim 1 (ties: lower
    column first). Used to make random models 2:4; not a pruning algorithm."""
    n, k = weight.shape
    if k % 4 != 0:
        raise ValueError(f"2:4 needs in_features divisible by 4, got {k}")
    g = weight.detach().abs().float().reshape(n, k // 4, 4)
    # stable descending sort so ties keep the lower column
    idx = torch.sort(g, dim=-1, descending=True, stable=True).indices[..., :2]
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(n, k)


def pack_24(weight: torch.Tensor, check: bool = True) -> Packed24:
    """Pack an exact 2:4 dense weight [N, K] into :class:`Packed24` (same dtype/device)."""
    if check:
        check_24(weight)
    n, k = weight.shape
    kp = padded_k(k)
    w = weight.detach()
    if kp != k:
        w = torch.cat([w, w.new_zeros(n, kp - k)], dim=1)
    groups = w.reshape(n, kp // 4, 4)
    nz = groups != 0
    # rank columns: nonzeros first (in column order), then zeros (in column order);
    # the first two ranks are the kept slots, then sort them back into column order.
    col = torch.arange(4, device=w.device)
    key = (~nz).to(torch.int64) * 4 + col
    kept = torch.sort(torch.argsort(key, dim=-1)[..., :2], dim=-1).values  # [n, G, 2]
    vals = torch.gather(groups, -1, kept)
    vals = torch.where(vals == 0, torch.zeros_like(vals), vals)  # -0.0 -> +0.0
    nib = (kept[..., 0] | (kept[..., 1] << 2)).to(torch.int64)  # [n, G]
    nib = nib.reshape(n, kp // 16, 4) << (4 * torch.arange(4, device=w.device))
    words = nib.sum(-1)  # disjoint bits: sum == or
    words = torch.where(words >= 2**15, words - 2**16, words).to(torch.int16)
    return Packed24(vals.reshape(n, kp // 2).contiguous(), words.contiguous(), k)


def decode_indices(meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int16 meta [N, Kp/16] -> (i0, i1) int64 [N, Kp/4] in-group columns of the slots."""
    n = meta.shape[0]
    shifts = 4 * torch.arange(4, device=meta.device)
    nib = (meta.to(torch.int64)[..., None] >> shifts) & 0xF
    nib = nib.reshape(n, -1)
    return nib & 3, nib >> 2


def unpack_24(packed: Packed24) -> torch.Tensor:
    """Dense [N, K] weight (zeros in pruned positions) from a :class:`Packed24`."""
    values, meta = packed.values, packed.meta
    n, kh = values.shape
    i0, i1 = decode_indices(meta)
    dense = values.new_zeros(n, kh // 2, 4)
    v = values.reshape(n, kh // 2, 2)
    dense.scatter_(-1, i0[..., None], v[..., 0:1])
    dense.scatter_(-1, i1[..., None], v[..., 1:2])
    return dense.reshape(n, kh * 2)[:, : packed.in_features]


def sparse24_matmul_reference(
    x: torch.Tensor, packed: Packed24, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``y = x @ W.T (+ bias)`` straight from the packed form, in fp32, cast to x.dtype.

    Gathers the activation for every kept value (the definition of the format, not a fast
    path): ``y[m, n] = sum_g v0[n,g] * x[m, 4g+i0] + v1[n,g] * x[m, 4g+i1]``.
    """
    k = packed.in_features
    kp = packed.padded_in_features
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k).float()
    if kp != k:
        x2 = torch.cat([x2, x2.new_zeros(x2.shape[0], kp - k)], dim=1)
    n = packed.out_features
    i0, i1 = decode_indices(packed.meta)
    base = 4 * torch.arange(kp // 4, device=x.device)
    v = packed.values.float().reshape(n, kp // 4, 2)
    y = x2.new_zeros(x2.shape[0], n)
    for slot, idx in ((0, i0), (1, i1)):
        cols = base + idx  # [n, G]
        # sum_g v[n,g] * x[m, cols[n,g]] without materialising [M, N, G] for big M
        for m in range(x2.shape[0]):
            y[m] += (v[..., slot] * x2[m][cols]).sum(-1)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*lead, n)
