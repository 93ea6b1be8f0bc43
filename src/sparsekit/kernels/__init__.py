"""2:4 sparse kernels: packed layout, Triton GEMV/GEMM for small M, and Sparse24Linear."""

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
    "check_24",
    "mask_24_magnitude",
    "pack_24",
    "sparse24_matmul_reference",
    "unpack_24",
]
