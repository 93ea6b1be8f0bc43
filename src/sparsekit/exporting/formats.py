"""Pure tensor codecs for the compressed-tensors sparse formats (no files, no models).

Both formats describe a dense weight ``W`` of shape ``[N, K]`` (``nn.Linear``: N outputs,
K inputs) with a **bitmask**: uint8 ``[N, ceil(K/8)]``, one bit per dense element, packed
little-endian along each row (bit ``i`` of byte ``j`` is column ``8j + i``; bits past K are
0), and a **compressed** tensor holding the values at the set bits in row-major order
(ascending column within a row). Decoding scatters ``compressed``, in order, into the set
positions of a zero tensor. ``-0.0`` counts as zero everywhere: it is never "kept" and a
kept slot is written as ``+0.0``.

``sparse-24-bitmask`` (2:4): ``compressed`` is ``[N, K/2]``: every group of 4 consecutive
columns has **exactly 2** set bits, so every row has K/2. Groups with fewer than 2 nonzeros
mark their nonzeros plus the lowest-index zero columns of the group (explicit ``+0.0``
values), e.g. a group ``[0, 0, 5, 0]`` keeps columns 0 and 2 and stores ``(0.0, 5.0)``.
This is the same rule as the kernel layout (:mod:`sparsekit.kernels.sparse24`), so
:func:`bitmask24_to_packed` converts without a dense copy. ``shape`` is int64 ``[2, 1]``.

``sparse-bitmask`` (unstructured): ``compressed`` is 1-D ``[nnz]`` with only the nonzeros,
``shape`` int64 ``[2]`` (1-D), ``row_offsets`` int64 ``[N]``: the exclusive cumulative sum
of per-row nonzero counts.
"""

from __future__ import annotations

import sys

import torch

from sparsekit.kernels.sparse24 import Packed24, padded_k

SPARSE24 = "sparse-24-bitmask"
BITMASK = "sparse-bitmask"


def pack_bitmask(mask: torch.Tensor) -> torch.Tensor:
    """bool ``[N, K]`` -> uint8 ``[N, ceil(K/8)]``, little-endian bit order within a byte."""
    n, k = mask.shape
    k8 = (k + 7) // 8
    bits = torch.zeros(n, k8 * 8, dtype=torch.uint8, device=mask.device)
    bits[:, :k] = mask
    bits = bits.reshape(n, k8, 8)
    out = bits[..., 0].clone()
    for i in range(1, 8):  # eight elementwise ops beat a reduction over a size-8 axis
        out |= bits[..., i] << i
    return out


def unpack_bitmask(bitmask: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 ``[N, ceil(K/8)]`` -> bool ``[N, K]`` (inverse of :func:`pack_bitmask`)."""
    n, k8 = bitmask.shape
    if k8 != (k + 7) // 8:
        raise ValueError(f"bitmask of shape {tuple(bitmask.shape)} does not fit K={k}")
    shifts = torch.arange(8, device=bitmask.device, dtype=torch.int32)
    bits = (bitmask.to(torch.int32)[..., None] >> shifts) & 1
    return bits.reshape(n, k8 * 8)[:, :k].bool()


def _plus_zero(values: torch.Tensor) -> torch.Tensor:
    """Replace -0.0 by +0.0 (other values unchanged)."""
    return torch.where(values == 0, torch.zeros_like(values), values)


def group_codes(weight: torch.Tensor) -> torch.Tensor:
    """int64 ``[N, K/4]``: the 4-bit nonzero pattern of every group of 4 input columns
    (bit c set = column 4g+c is nonzero; -0.0 is zero). K must be divisible by 4."""
    n, k = weight.shape
    nz = (weight != 0).view(torch.uint8).reshape(n, k // 4, 4)
    if sys.byteorder == "little":  # the 4 flag bytes of a group as one int32: bit 8c = flag c
        x = nz.view(torch.int32).squeeze(-1)
        return ((x & 1) | (x >> 7 & 2) | (x >> 14 & 4) | (x >> 21 & 8)).long()
    return (nz.long() << torch.arange(4, device=weight.device)).sum(-1)


def _tables() -> tuple[torch.Tensor, torch.Tensor]:
    """Per 4-bit pattern: its popcount, and the kept pattern (the nonzeros, then the lowest
    zero columns, up to two; patterns with more than 2 bits map to themselves)."""
    count, kept = torch.zeros(16, dtype=torch.uint8), torch.zeros(16, dtype=torch.uint8)
    for code in range(16):
        ones = [c for c in range(4) if code >> c & 1]
        zeros = [c for c in range(4) if not code >> c & 1]
        count[code] = len(ones)
        kept[code] = sum(1 << c for c in ones + zeros[: max(0, 2 - len(ones))])
    return count, kept


_COUNT, _KEPT = _tables()


def not_24_groups(weight: torch.Tensor) -> int:
    """Number of groups of 4 input columns with more than 2 nonzeros (-1 if K % 4 != 0)."""
    if weight.shape[1] % 4:
        return -1
    return int((_COUNT.to(weight.device)[group_codes(weight)] > 2).sum())


def _nibbles_to_mask(nibbles: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 ``[N, K/4]`` 4-bit patterns -> bool ``[N, K]``."""
    shifts = torch.arange(4, device=nibbles.device, dtype=torch.uint8)
    return ((nibbles[..., None] >> shifts) & 1).bool().reshape(nibbles.shape[0], k)


def kept_mask_24(weight: torch.Tensor) -> torch.Tensor:
    """bool ``[N, K]`` with exactly 2 True per group of 4: the nonzeros, then the lowest
    zero columns. The weight must already be 2:4 (see :func:`not_24_groups`)."""
    kept = _KEPT.to(weight.device)[group_codes(weight)]
    return _nibbles_to_mask(kept, weight.shape[1])


def compress_24(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact 2:4 weight ``[N, K]`` -> (compressed ``[N, K/2]``, bitmask, shape int64 [2, 1]).

    Raises ValueError if K % 4 != 0 or some group has more than 2 nonzeros (never prunes).
    """
    if weight.dim() != 2:
        raise ValueError(f"2:4 weight must be 2-D, got shape {tuple(weight.shape)}")
    bad = not_24_groups(weight)
    if bad:
        why = "K not divisible by 4" if bad < 0 else f"{bad} groups of 4 with >2 nonzeros"
        raise ValueError(f"weight of shape {tuple(weight.shape)} is not 2:4 ({why})")
    n, k = weight.shape
    kept = kept_mask_24(weight)
    compressed = _plus_zero(torch.masked_select(weight, kept)).reshape(n, k // 2)
    shape = torch.tensor([[n], [k]], dtype=torch.int64)
    return compressed, pack_bitmask(kept), shape


def _dense_shape(shape: torch.Tensor) -> tuple[int, int]:
    n, k = (int(v) for v in shape.reshape(-1).tolist())
    return n, k


def decompress(compressed: torch.Tensor, bitmask: torch.Tensor,
               shape: torch.Tensor) -> torch.Tensor:
    """Dense ``[N, K]`` from either format: scatter ``compressed`` into the set bits."""
    n, k = _dense_shape(shape)
    mask = unpack_bitmask(bitmask, k)
    values = compressed.reshape(-1)
    if int(mask.sum()) != values.numel():
        raise ValueError(f"bitmask has {int(mask.sum())} set bits but there are "
                         f"{values.numel()} compressed values")
    dense = torch.zeros(n, k, dtype=compressed.dtype, device=compressed.device)
    return dense.masked_scatter_(mask, _plus_zero(values))


def compress_bitmask(weight: torch.Tensor):
    """Any weight ``[N, K]`` -> (compressed [nnz], bitmask, shape int64 [2], row_offsets [N])."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D, got shape {tuple(weight.shape)}")
    n, k = weight.shape
    mask = weight != 0
    counts = mask.sum(1, dtype=torch.int64)
    row_offsets = torch.cumsum(counts, 0) - counts
    shape = torch.tensor([n, k], dtype=torch.int64)
    return _plus_zero(torch.masked_select(weight, mask)), pack_bitmask(mask), shape, row_offsets


# 4-bit group mask with exactly two bits set -> kernel nibble i0 | i1 << 2 (i0 < i1)
_NIBBLE = torch.full((16,), -1, dtype=torch.int64)
for _m in range(16):
    _cols = [c for c in range(4) if _m >> c & 1]
    if len(_cols) == 2:
        _NIBBLE[_m] = _cols[0] | _cols[1] << 2


def bitmask24_to_packed(compressed: torch.Tensor, bitmask: torch.Tensor,
                        shape: torch.Tensor) -> Packed24:
    """sparse-24-bitmask tensors -> the kernel layout (:class:`Packed24`), without a dense copy.

    The value order is identical in both layouts; only the 4-bit group masks become index
    nibbles and K is padded to the kernel alignment. Raises ValueError unless every group
    has exactly 2 set bits (use :func:`decompress` + ``pack_24`` for such checkpoints).
    """
    n, k = _dense_shape(shape)
    if k % 4 or compressed.shape != (n, k // 2):
        raise ValueError(f"compressed {tuple(compressed.shape)} does not fit a 2:4 weight {n}x{k}")
    bytes_ = bitmask.to(torch.int64)
    if bitmask.shape != (n, (k + 7) // 8):
        raise ValueError(f"bitmask of shape {tuple(bitmask.shape)} does not fit K={k}")
    # each byte holds two groups: low nibble = group 2j, high nibble = group 2j+1
    groups = torch.stack([bytes_ & 0xF, bytes_ >> 4], dim=-1).reshape(n, -1)[:, : k // 4]
    nib = _NIBBLE.to(groups.device)[groups]
    if bool((nib < 0).any()):
        raise ValueError("bitmask is not exactly 2 of every 4")
    kp = padded_k(k)
    pad_groups = (kp - k) // 4
    values = _plus_zero(compressed)
    if pad_groups:  # padded groups: zero values at columns 0 and 1 (nibble 0 | 1 << 2)
        nib = torch.cat([nib, nib.new_full((n, pad_groups), 4)], dim=1)
        values = torch.cat([values, values.new_zeros(n, 2 * pad_groups)], dim=1)
    nib = nib.reshape(n, kp // 16, 4)
    words = nib[..., 0] | nib[..., 1] << 4 | nib[..., 2] << 8 | nib[..., 3] << 12
    words = torch.where(words >= 2**15, words - 2**16, words).to(torch.int16)
    return Packed24(values.contiguous(), words.contiguous(), k)
