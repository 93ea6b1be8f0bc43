"""The runtime ("panel") layout of a 2:4 weight: :class:`~sparsekit.kernels.sparse24.Packed24`
cut into K panels so that every kernel tile is one contiguous block of memory.

``Packed24`` keeps whole rows contiguous (``values`` [N, Kp/2], ``meta`` [N, Kp/16]). A
kernel tile of ``BN`` rows by ``BG`` groups then touches ``BN`` separate row segments. The
panel layout arranges the same numbers offline (at load time) as ``P`` panels of ``PG``
groups (``4*PG`` dense columns), each panel a row-major block of all N rows:

``values``  ``[P, N, 2*PG]``, model dtype: ``values[p, n, 2j + s]`` is slot ``s`` of group
            ``p*PG + j`` of row ``n`` (slot 0 = lower column), i.e. panel ``p`` is exactly
            the column block ``packed.values[:, p*2PG:(p+1)*2PG]``.
``meta``    ``[P, N, PG/4]``, int16: element ``[p, n, e]`` holds the 4 nibbles of groups
            ``p*PG + 4e .. +3``, the same encoding as ``Packed24.meta`` (nibble ``j`` at bits
            ``4j..4j+3`` is ``i0 | i1 << 2``).

A tile of ``BN`` consecutive rows and ``BG = PG`` groups is then one contiguous run of
``BN*2*PG`` values plus one of ``BN*PG/4`` meta words (two streams, two loads); ``BG`` may
also be any power of two dividing ``PG`` (a tile is then ``BN`` segments of ``2*BG`` values
with stride ``2*PG``). A row block's panels are ``N*2*PG`` values apart.

K is padded to a multiple of ``4*PG`` with zero values whose indices are ``(0, 1)`` (nibble
``4``), exactly like :func:`~sparsekit.kernels.sparse24.pack_24` pads to a multiple of 64, so
padding never changes a product (activations past K are masked to zero in the kernels).
Converting to and from ``Packed24`` is a reshape and a permute: exact, no arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsekit.kernels.sparse24 import Packed24, padded_k

PAD_NIBBLES = 0x4444  # four groups with indices (0, 1): the meta word of zero padding
PANEL_GROUPS = (16, 32, 64, 128, 256)


@dataclass
class Panel24:
    """2:4 weight in panel layout: ``values`` [P, N, 2*PG], ``meta`` int16 [P, N, PG/4]."""

    values: torch.Tensor
    meta: torch.Tensor
    in_features: int

    @property
    def out_features(self) -> int:
        return self.values.shape[1]

    @property
    def panel_groups(self) -> int:
        return self.values.shape[2] // 2

    @property
    def num_panels(self) -> int:
        return self.values.shape[0]

    @property
    def padded_in_features(self) -> int:
        return self.num_panels * 4 * self.panel_groups


def check_panel_groups(panel_groups: int) -> None:
    if panel_groups not in PANEL_GROUPS:
        raise ValueError(f"panel width must be one of {PANEL_GROUPS} groups, got {panel_groups}")


def to_panels(packed: Packed24, panel_groups: int = 64) -> Panel24:
    """:class:`Packed24` -> :class:`Panel24` with panels of ``panel_groups`` groups."""
    check_panel_groups(panel_groups)
    values, meta = packed.values, packed.meta
    n = values.shape[0]
    width = 4 * panel_groups
    kp = (packed.in_features + width - 1) // width * width
    have = values.shape[1] * 2
    if have > kp:  # only if the input carries more padding than needed
        values, meta = values[:, : kp // 2], meta[:, : kp // 16]
    elif have < kp:
        values = torch.cat([values, values.new_zeros(n, (kp - have) // 2)], dim=1)
        meta = torch.cat([meta, meta.new_full((n, (kp - have) // 16), PAD_NIBBLES)], dim=1)
    p = kp // width
    v = values.reshape(n, p, 2 * panel_groups).permute(1, 0, 2).contiguous()
    m = meta.reshape(n, p, panel_groups // 4).permute(1, 0, 2).contiguous()
    return Panel24(v, m, packed.in_features)


def from_panels(panels: Panel24) -> Packed24:
    """Inverse of :func:`to_panels` (padding trimmed back to ``padded_k``)."""
    p, n, vw = panels.values.shape
    kp = padded_k(panels.in_features)
    values = panels.values.permute(1, 0, 2).reshape(n, p * vw)[:, : kp // 2]
    meta = panels.meta.permute(1, 0, 2).reshape(n, -1)[:, : kp // 16]
    return Packed24(values.contiguous(), meta.contiguous(), panels.in_features)
