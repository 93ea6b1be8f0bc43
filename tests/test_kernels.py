"""2:4 kernels: layout round trips, Triton kernels (compiled on a GPU, under the interpreter
on CPU; see conftest) vs the torch reference and dense matmul, Sparse24Linear vs nn.Linear,
dispatch choices."""

import pytest
import torch
from torch import nn

from sparsekit.kernels.linear import (
    DEFAULT_DISPATCH,
    DISPATCH,
    Sparse24Linear,
    choose_backend,
    sparsify_model_24,
)
from sparsekit.kernels.sparse24 import (
    check_24,
    mask_24_magnitude,
    pack_24,
    sparse24_matmul_reference,
    unpack_24,
)
from sparsekit.kernels.sparse24_triton import Sparse24Config, sparse24_decompress, sparse24_mm

from conftest import KERNEL_DEVICE as DEV

# the interpreter computes bf16 arithmetic wrongly (see the kernel module); bf16 is GPU-only
KERNEL_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEV == "cuda" else [])


def rand24(n, k, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    return (w * mask_24_magnitude(w)).to(dtype)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def test_mask_is_24_and_keeps_largest():
    w = torch.tensor([[1.0, -5.0, 3.0, 0.5, 0.0, 0.0, 0.0, 2.0]])
    m = mask_24_magnitude(w)
    assert m.tolist() == [[False, True, True, False, True, False, False, True]]
    check_24(w * m)


@pytest.mark.parametrize("k", [36, 100, 260])
def test_pack_roundtrip_exact(k):
    w = rand24(19, k, torch.float16, seed=k)
    w[0, :4] = 0  # all-zero group
    w[1, :4] = torch.tensor([0, 0, 0, 3.0])  # single nonzero in the last column
    p = pack_24(w)
    assert p.values.shape == (19, p.padded_in_features // 2)
    assert p.meta.dtype == torch.int16 and p.meta.shape == (19, p.padded_in_features // 16)
    assert torch.equal(unpack_24(p), w)
    assert torch.equal(sparse24_decompress(p.values.to(DEV), p.meta.to(DEV), k).cpu(), w)


def test_negative_zero_is_zero():
    w = torch.tensor([[-0.0, 1.0, -0.0, 2.0, 3.0, -0.0, -0.0, -0.0]])
    check_24(w)  # 2 "nonzeros" per group: -0.0 does not count
    p = pack_24(w)
    assert not torch.signbit(p.values[p.values == 0]).any()
    assert torch.equal(unpack_24(p), w)


def test_non_24_refused():
    w = rand24(8, 16)
    w[3, 4:8] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    with pytest.raises(ValueError, match=r"not 2:4.*row 3, columns 4\.\.7 \(3 nonzeros\)"):
        check_24(w)
    lin = nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight.copy_(w)
    with pytest.raises(ValueError, match="not 2:4"):
        Sparse24Linear.from_dense(lin)
    with pytest.raises(ValueError, match="divisible by 4"):
        check_24(torch.zeros(2, 6))


def test_reference_matches_dense():
    w = rand24(21, 100)
    x = torch.randn(3, 100)
    b = torch.randn(21)
    ref = x.double() @ w.double().T + b.double()
    assert rel(sparse24_matmul_reference(x, pack_24(w), b), ref) < 1e-6


CONFIGS = [
    Sparse24Config("gemv", bn=4, bg=8, split_k=1),
    Sparse24Config("gemv", bn=8, bg=16, split_k=3),
    Sparse24Config("dot", bn=16, bg=8, split_k=1),
    Sparse24Config("dot", bn=16, bg=16, split_k=2),
]


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 19, 36), (3, 33, 100), (16, 20, 260)])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.short())
def test_triton_kernel(dtype, m, n, k, cfg):
    if cfg.kernel == "gemv" and m > 4:
        pytest.skip("gemv kernel is for M <= 4")
    w = rand24(n, k, dtype, seed=m * 1000 + k)
    p = pack_24(w)
    x = torch.randn(m, k).to(dtype)
    b = torch.randn(n).to(dtype)
    y = sparse24_mm(x.to(DEV), p.values.to(DEV), p.meta.to(DEV), k, b.to(DEV), cfg).cpu()
    assert y.dtype == dtype and y.shape == (m, n) and torch.isfinite(y).all()
    dense = x.double() @ w.double().T + b.double()
    tol = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    assert rel(y, dense) < tol
    assert rel(y, sparse24_matmul_reference(x, p, b)) < tol
    # a wrong index decode must be caught: flipping one nibble changes the answer
    bad = p.meta.clone()
    nib = int(bad[0, 0]) & 0xF  # group 0 of row 0 -> another valid (i0, i1) pair
    bad[0, 0] = (int(bad[0, 0]) & ~0xF) | (4 if nib != 4 else 14)
    yb = sparse24_mm(x.to(DEV), p.values.to(DEV), bad.to(DEV), k, b.to(DEV), cfg).cpu()
    assert not torch.allclose(yb[:, 0].float(), y[:, 0].float())
    assert torch.equal(yb[:, 1:], y[:, 1:])


def test_sparse24_linear_matches_linear_cpu():
    torch.manual_seed(0)
    lin = nn.Linear(100, 37)
    with torch.no_grad():
        lin.weight.mul_(mask_24_magnitude(lin.weight))
    s = Sparse24Linear.from_dense(lin)
    x = torch.randn(2, 5, 100)
    assert torch.allclose(s(x), lin(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(s.to_dense_weight(), lin.weight.detach())
    names = dict(s.named_buffers())
    assert set(names) == {"values", "meta", "bias"}
    dense_bytes = lin.weight.numel() * 2
    packed_bytes = s.values.half().numel() * 2 + s.meta.numel() * 2
    assert packed_bytes <= dense_bytes * (9 / 16) * (128 / 100) + 1  # padding of K=100
    s16 = Sparse24Linear.from_packed(pack_24(lin.weight.detach().half()), None)
    assert s16.values.dtype == torch.float16 and s16.to(torch.float32).values.dtype == \
        torch.float32


def test_sparsify_model_swaps_only_24():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    with torch.no_grad():
        model[0].weight.mul_(mask_24_magnitude(model[0].weight))
    x = torch.randn(4, 16)
    before = model(x)
    swapped = sparsify_model_24(model)
    assert swapped == ["0"]
    assert isinstance(model[0], Sparse24Linear) and isinstance(model[2], nn.Linear)
    assert torch.allclose(model(x), before, atol=1e-5)
    model2 = nn.Sequential(nn.Linear(16, 32))
    with torch.no_grad():
        model2[0].weight.mul_(mask_24_magnitude(model2[0].weight))
    assert sparsify_model_24(model2, names=["other"]) == []


def test_dispatch_table_is_pure_function():
    h100 = (9, 0)
    assert choose_backend(1, torch.bfloat16, None) == "torch"
    assert choose_backend(1, torch.bfloat16, h100) == "triton"
    assert choose_backend(16, torch.float16, h100) == "triton"
    assert choose_backend(17, torch.float16, h100) == "dense"
    assert choose_backend(8192, torch.bfloat16, (12, 0)) == "dense"
    assert choose_backend(1, torch.float32, h100) == "dense"
    assert DEFAULT_DISPATCH[-1] == (None, "dense")
    DISPATCH[(9, 0, "bfloat16")] = ((4, "triton"), (64, "cusparselt"), (None, "dense"))
    try:
        assert choose_backend(4, torch.bfloat16, h100) == "triton"
        assert choose_backend(5, torch.bfloat16, h100) == "cusparselt"
        assert choose_backend(65, torch.bfloat16, h100) == "dense"
        assert choose_backend(5, torch.float16, h100) == "triton"  # other dtype: default
    finally:
        del DISPATCH[(9, 0, "bfloat16")]


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 2, 5, 16, 64])
def test_sparse24_linear_gpu(dtype, m):
    torch.manual_seed(m)
    lin = nn.Linear(1024, 600, device="cuda", dtype=dtype)
    with torch.no_grad():
        lin.weight.mul_(mask_24_magnitude(lin.weight))
    s = Sparse24Linear.from_dense(lin)
    x = torch.randn(m, 1024, device="cuda", dtype=dtype)
    ref = x.double() @ lin.weight.double().T + lin.bias.double()
    assert rel(s(x), ref) < 1e-2
