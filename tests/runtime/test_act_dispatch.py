"""The activation-sparse op and its dispatch: the table's choices (pure functions), forcing a
backend, and ``sparsekit::act_sparse_linear`` against the masked-linear reference on every
backend reachable here (the Triton one on CPU tensors under the interpreter), plus the checks
``torch.compile`` relies on (schema, fake tensors)."""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_DEVICE
from torch import nn

from sparsekit.kernels.act_sparse import MAX_M, masked_linear_reference
from sparsekit.runtime import act_dispatch
from sparsekit.runtime.act_dispatch import DEFAULT_DISPATCH, ActConfig, check_table, choose, force, select
from sparsekit.runtime.act_sparse import ActSparse, act_sparse_linear

H100 = (9, 0)


# ------------------------------------------------------------------------------------ table
def test_cpu_always_takes_the_masked_dense_product():
    for m in (1, 3, 16, 17, 4096):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            assert choose(m, dtype, None) == ("torch", None)


def test_cuda_small_m_takes_the_kernel_large_m_the_dense_product():
    assert choose(1, torch.bfloat16, H100) == ("triton", ActConfig(64, 128, 4))
    assert choose(2, torch.float16, H100) == ("triton", ActConfig(64, 128, 4))
    assert choose(3, torch.bfloat16, H100) == ("triton", ActConfig(32, 128, 4))
    assert choose(MAX_M, torch.float32, H100) == ("triton", ActConfig(16, 64, 4))
    assert choose(MAX_M + 1, torch.bfloat16, H100) == ("torch", None)
    assert choose(512, torch.bfloat16, H100) == ("torch", None)
    assert choose(0, torch.bfloat16, H100) == ("torch", None)         # an empty batch
    assert choose(1, torch.float64, H100) == ("torch", None)          # a dtype the kernel lacks


def test_measured_tables_override_the_default(monkeypatch):
    table = ((8, "triton", ActConfig(128, 64, 8)), (None, "torch", None))
    check_table(table)
    monkeypatch.setitem(act_dispatch.DISPATCH, (8, 0, "float16"), table)
    assert choose(8, torch.float16, (8, 0)) == ("triton", ActConfig(128, 64, 8))
    assert choose(9, torch.float16, (8, 0)) == ("torch", None)
    assert choose(9, torch.bfloat16, (8, 0)) == ("triton", ActConfig(16, 64, 4))   # default table


def test_check_table():
    check_table(DEFAULT_DISPATCH)
    cfg = ActConfig()
    for bad, message in [
        (((None, "cusparselt", None),), "unknown backend"),
        (((4, "triton", None), (None, "torch", None)), "needs an ActConfig"),
        (((None, "triton", cfg),), "M <= 16"),
        (((32, "triton", cfg), (None, "torch", None)), "M <= 16"),
        (((4, "triton", cfg), (2, "triton", cfg), (None, "torch", None)), "increase"),
        (((None, "torch", None), (None, "torch", None)), "only the last"),
        (((4, "triton", cfg),), "last entry"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_table(bad)


def test_force_overrides_and_restores():
    assert act_dispatch.forced() is None
    with force("triton"):
        assert select(3, torch.float32, None) == ("triton", ActConfig(32, 128, 4))
        with force("torch"):
            assert select(1, torch.bfloat16, H100) == ("torch", None)
        assert act_dispatch.forced() == "triton"
        with pytest.raises(ValueError, match="1..16"):
            select(MAX_M + 1, torch.float32, None)
    assert act_dispatch.forced() is None
    assert select(1, torch.bfloat16, H100) == choose(1, torch.bfloat16, H100)
    with pytest.raises(ValueError, match="backend"):
        with force("cuda"):
            pass
    assert act_dispatch.forced() is None


# --------------------------------------------------------------------------------------- op
def _case(m, k, n, kind, dtype, seed=0):
    g = torch.Generator().manual_seed(seed + m)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    thr, scale = torch.tensor(0.6), None
    if kind == "channel":
        thr = torch.rand(k, generator=g) * 1.2
        thr[:8] = float("inf")
    if kind == "scaled":
        scale = torch.rand(k, generator=g) * 2
    dev = KERNEL_DEVICE
    return (x.to(dev), w.to(dev), bias.to(dev), thr.to(dev), None if scale is None else scale.to(dev))


KERNEL_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if KERNEL_DEVICE == "cuda" else [])


@pytest.mark.parametrize("backend", ["torch", "triton", None])
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("kind", ["scalar", "channel", "scaled"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_op_matches_masked_linear_reference(backend, m, kind, dtype):
    x, w, bias, thr, scale = _case(m, 72, 40, kind, dtype)
    with force(backend):
        got = act_sparse_linear(x, w, bias, thr, scale)
    want = masked_linear_reference(x, w, bias, thr, scale)
    assert got.shape == (m, 40) and got.dtype == dtype
    if backend == "torch" or (backend is None and KERNEL_DEVICE == "cpu"):
        assert torch.equal(got, want)
    else:
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    assert not torch.allclose(got, torch.nn.functional.linear(x, w, bias), atol=1e-3, rtol=1e-3)


def test_op_without_bias_and_with_a_per_channel_scale_of_zero():
    x, w, _, _, _ = _case(2, 32, 16, "scalar", torch.float32)
    scale = torch.ones(32, device=x.device)
    scale[5:9] = 0.0                          # WINA: a channel of zero norm is always dropped
    thr = torch.tensor(0.3, device=x.device)
    for backend in ("torch", "triton"):
        with force(backend):
            got = act_sparse_linear(x, w, None, thr, scale)
        torch.testing.assert_close(got, masked_linear_reference(x, w, None, thr, scale), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_wrapper_through_the_forced_backend(backend):
    """The wrapper (counters off) reaches the op with the stored weight; M = B * T rows."""
    torch.manual_seed(0)
    lin = nn.Linear(48, 20).to(KERNEL_DEVICE)
    g = torch.Generator().manual_seed(3)
    thr = (torch.rand(48, generator=g) * 0.8).to(KERNEL_DEVICE)
    m = ActSparse(lin, thr, count=False)
    x = torch.randn(3, 1, 48, generator=g).to(KERNEL_DEVICE)
    with torch.no_grad(), force(backend):
        got = m(x)
    assert got.shape == (3, 1, 20)
    torch.testing.assert_close(got, masked_linear_reference(x, lin.weight, lin.bias, thr), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(backend):
    """Schema, fake-tensor and AOT-dispatch checks of the op (what torch.compile needs)."""
    x, w, bias, thr, scale = _case(3, 32, 24, "scaled", torch.float32)
    with force(backend):
        torch.library.opcheck(act_sparse_linear, (x, w, bias, thr, scale))
        torch.library.opcheck(act_sparse_linear, (x, w, None, thr.expand(32).contiguous(), None))


def test_compiles_as_one_opaque_node():
    """torch.compile (trace only, no code generation) of a wrapped linear: one graph, the same
    result as eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    m = ActSparse(lin, 0.5, count=False).eval()
    x = torch.randn(2, 1, 32)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), m(x))
    torch._dynamo.reset()
