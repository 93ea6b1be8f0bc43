"""Ops only: the 2:4 layouts (:mod:`~sparsekit.kernels.sparse24` packed rows,
:mod:`~sparsekit.kernels.panel24` the runtime's panel layout) with their pack/unpack and torch
references, the Triton kernels (:mod:`~sparsekit.kernels.sparse24_triton` and the modules it
launches), and a cuSPARSELt wrapper. Modules that replace ``nn.Linear`` at load time live in
:mod:`sparsekit.runtime`."""

from sparsekit.kernels.panel24 import Panel24, from_panels, to_panels
from sparsekit.kernels.sparse24 import (
    K_ALIGN,
    Packed24,
    check_24,
    mask_24_magnitude,
    pack_24,
    sparse24_matmul_reference,
    unpack_24,
)

__all__ = [
    "K_ALIGN",
    "Packed24",
    "Panel24",
    "check_24",
    "from_panels",
    "mask_24_magnitude",
    "pack_24",
    "sparse24_matmul_reference",
    "to_panels",
    "unpack_24",
]
