"""Activation-sparse Triton product (interpreter on CPU, compiled on a GPU) against the torch
reference and against the runtime wrapper's masked linear, with the weight passed either as
``W.T.contiguous()`` or as the transposed view ``W.t()`` of the stored weight (no copy)."""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_DEVICE

from sparsekit.kernels.act_sparse_triton import act_sparse_mm
from sparsekit.kernels.act_sparse import act_sparse_mm_reference

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if KERNEL_DEVICE == "cuda" else [])


def _wt(w: torch.Tensor, layout: str) -> torch.Tensor:
    """W.T [K, N] of the stored weight W [N, K]: a contiguous copy, or the strided view."""
    if layout == "view":
        wt = w.t()
        assert wt.stride() == (1, w.shape[1]) and wt.data_ptr() == w.data_ptr()
        return wt
    return w.t().contiguous()


@pytest.mark.parametrize("layout", ["contiguous", "view"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n,kind", [(1, 96, 40, "scalar"), (3, 130, 70, "channel"), (16, 64, 33, "scaled")])
def test_matches_reference(dtype, m, k, n, kind, layout):
    g = torch.Generator().manual_seed(m + k)
    x = torch.randn(m, k, generator=g).to(dtype).to(KERNEL_DEVICE)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(dtype).to(KERNEL_DEVICE)
    bias = torch.randn(n, generator=g).to(dtype).to(KERNEL_DEVICE)
    thr = torch.tensor(0.7)
    scale = None
    if kind == "channel":
        thr = torch.rand(k, generator=g) * 1.5
        thr[:20] = float("inf")  # a whole block of channels never read
    if kind == "scaled":
        scale = torch.rand(k, generator=g) * 2
    thr = thr.to(KERNEL_DEVICE)
    scale = None if scale is None else scale.to(KERNEL_DEVICE)
    wt = _wt(w, layout)
    got = act_sparse_mm(x, wt, thr, scale, bias, bk=32, bn=32)
    want = act_sparse_mm_reference(x, w.t().contiguous(), thr, scale, bias)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    # the mask matters: a dense product differs
    dense = (x.float() @ wt.float() + bias.float()).to(dtype)
    assert not torch.allclose(got, dense, atol=tol, rtol=tol)


@pytest.mark.parametrize("layout", ["contiguous", "view"])
def test_equals_runtime_wrapper_and_keeps_shape(layout):
    from torch import nn

    from sparsekit.runtime.act_sparse import ActSparse

    torch.manual_seed(0)
    lin = nn.Linear(48, 20).to(KERNEL_DEVICE)
    x = torch.randn(2, 1, 48, device=KERNEL_DEVICE)
    thr = torch.full((48,), 0.5, device=KERNEL_DEVICE)
    wrapped = ActSparse(lin, thr)
    with torch.no_grad():
        want = wrapped(x)
        got = act_sparse_mm(x, _wt(lin.weight, layout), thr, None, lin.bias, bk=16, bn=16)
    assert got.shape == (2, 1, 20)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_rejects_large_m_and_bad_shapes():
    x = torch.randn(17, 8, device=KERNEL_DEVICE)
    w = torch.randn(8, 4, device=KERNEL_DEVICE)
    with pytest.raises(ValueError, match="dense path"):
        act_sparse_mm(x, w, torch.tensor(0.1))
    with pytest.raises(ValueError, match="features"):
        act_sparse_mm(x[:2], torch.randn(4, 8, device=KERNEL_DEVICE), torch.tensor(0.1))
    with pytest.raises(ValueError, match="threshold"):
        act_sparse_mm(x[:2], w, torch.zeros(5))
    with pytest.raises(ValueError, match="scale"):
        act_sparse_mm(x[:2], w, torch.tensor(0.1), torch.ones(5))


@pytest.mark.parametrize("layout", ["contiguous", "view"])
def test_rows_of_zeroed_channels_are_never_read(layout):
    """Weights of channels no row of x keeps may hold NaN: the kernel does not load them."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 64, generator=g).to(KERNEL_DEVICE)
    x[:, 10:30] = 0.01                      # below the threshold in both rows
    w = torch.randn(24, 64, generator=g).to(KERNEL_DEVICE)   # stored [N, K]
    poisoned = w.clone()
    poisoned[:, 10:30] = float("nan")
    thr = torch.tensor(0.05, device=KERNEL_DEVICE)
    got = act_sparse_mm(x, _wt(poisoned, layout), thr, bk=16, bn=8)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, act_sparse_mm_reference(x, w.t(), thr), atol=1e-5, rtol=1e-5)
