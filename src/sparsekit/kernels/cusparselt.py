"""cuSPARSELt 2:4 matmul through PyTorch's private ops (``torch._cslt_compress`` /
``torch._cslt_sparse_mm``), without the ``SparseSemiStructuredTensor`` subclass, so the
compressed weight is a plain tensor that can sit in a module and pass through a custom op.

cuSPARSELt uses the sparse tensor cores (``mma.sp``); on Hopper it beats dense cuBLAS only at
prefill sizes (M in the thousands). Its compressed blob (values plus metadata in its own
layout, 9/16 of the dense bytes) is a *second* copy of the weight next to sparsekit's panel
layout, so it is built only on request.
"""

from __future__ import annotations

import torch

DENSE_MIN = 8  # cuSPARSELt wants the dense operand's dims in multiples of 8 (16-bit types)


def available() -> bool:
    return torch.cuda.is_available() and hasattr(torch, "_cslt_compress")


def compress(weight: torch.Tensor) -> torch.Tensor:
    """cuSPARSELt blob of an exact 2:4 CUDA weight [N, K] (fp16/bf16, N and K multiples of 16)."""
    n, k = weight.shape
    if not weight.is_cuda or weight.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError("cuSPARSELt needs a CUDA fp16/bf16 weight")
    if n % 16 or k % 16:
        raise ValueError(f"cuSPARSELt needs both dims of the weight in multiples of 16, got {n}x{k}")
    return torch._cslt_compress(weight.contiguous())


def linear(x: torch.Tensor, blob: torch.Tensor, out_features: int,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ W.T (+ bias)`` for 2-D x [M, K]; y [M, N] contiguous, x's dtype."""
    m = x.shape[0]
    pad = (-m) % DENSE_MIN
    xp = torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x
    # (W @ x^T)^T written row-major by cuSPARSELt ("transpose_result"): [M, N]
    y = torch._cslt_sparse_mm(blob, xp.t(), bias=bias, transpose_result=True)
    return y[:m].contiguous() if pad else y.contiguous()
