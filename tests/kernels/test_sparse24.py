"""2:4 ops: packed and panel layouts (exact round trips), the torch reference, and the Triton
kernels (compiled on a GPU, under the interpreter on CPU; see conftest) against an fp64
reference at odd sizes, K tails, split-K, both reductions, strided x."""

import pytest
import torch
from conftest import KERNEL_DEVICE as DEV

from sparsekit.kernels.panel24 import PAD_NIBBLES, from_panels, to_panels
from sparsekit.kernels.sparse24 import (
    check_24,
    mask_24_magnitude,
    pack_24,
    sparse24_matmul_reference,
    unpack_24,
)
from sparsekit.kernels.sparse24_triton import (
    Sparse24Config,
    sparse24_decompress,
    sparse24_mm,
)

# bf16 runs under the interpreter only through kernels that upcast before any arithmetic
# (gemv always; mma with upcast, the default under the interpreter); GPUs run bf16 natively


def rand24(n, k, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    return (w * mask_24_magnitude(w)).to(dtype)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def assert_rounded_equal(y, exact, dtype):
    """y equals the exact fp64 result rounded to dtype, up to one unit in the last place
    (the kernels accumulate in fp32 in their own order)."""
    assert y.dtype == dtype and y.shape == exact.shape and torch.isfinite(y).all()
    if dtype == torch.float32:
        assert rel(y, exact) < 1e-6
        return
    ref = exact.to(dtype)
    ulp = torch.finfo(dtype).eps * ref.float().abs().clamp_min(torch.finfo(dtype).tiny)
    assert ((y.float() - ref.float()).abs() <= ulp * 1.0001).all(), \
        (y.float() - ref.float()).abs().max()


def test_mask_is_24_and_keeps_largest():
    w = torch.tensor([[1.0, -5.0, 3.0, 0.5, 0.0, 0.0, 0.0, 2.0]])
    m = mask_24_magnitude(w)
    assert m.tolist() == [[False, True, True, False, True, False, False, True]]
    check_24(w * m)


@pytest.mark.parametrize("k", [36, 100, 260])
def test_pack_and_panels_roundtrip_exact(k):
    w = rand24(19, k, torch.float16, seed=k)
    w[0, :4] = 0  # all-zero group
    w[1, :4] = torch.tensor([0, 0, 0, 3.0])  # single nonzero in the last column
    p = pack_24(w)
    assert p.values.shape == (19, p.padded_in_features // 2)
    assert p.meta.dtype == torch.int16 and p.meta.shape == (19, p.padded_in_features // 16)
    assert torch.equal(unpack_24(p), w)
    for pg in (16, 64):
        pn = to_panels(p, pg)
        assert pn.values.shape == (pn.num_panels, 19, 2 * pg)
        assert pn.padded_in_features % (4 * pg) == 0 and pn.padded_in_features >= k
        back = from_panels(pn)
        assert torch.equal(back.values, p.values) and torch.equal(back.meta, p.meta)
        # panel p is the column block p of the row-major values
        assert torch.equal(pn.values[0, :, : min(2 * pg, p.values.shape[1])],
                           p.values[:, : 2 * pg])
        pad = pn.padded_in_features - p.padded_in_features
        if pad:  # padding: zero values, indices (0, 1)
            assert (pn.meta[-1, :, -(pad // 16):] == PAD_NIBBLES).all()
        assert torch.equal(sparse24_decompress(pn.values.to(DEV), pn.meta.to(DEV), k).cpu(), w)


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
    with pytest.raises(ValueError, match="divisible by 4"):
        check_24(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="panel width"):
        to_panels(pack_24(rand24(4, 16)), 24)


def test_reference_matches_dense():
    w = rand24(21, 100)
    x = torch.randn(3, 100)
    b = torch.randn(21)
    ref = x.double() @ w.double().T + b.double()
    assert rel(sparse24_matmul_reference(x, pack_24(w), b), ref) < 1e-6


def test_config_short_form_round_trips():
    for cfg in (Sparse24Config(), Sparse24Config("mma", bn=64, bg=16, bm=32, split_k=3,
                                                 reduce="kernel", prefetch=False,
                                                 num_warps=8, num_stages=3)):
        assert Sparse24Config.parse(cfg.short()) == cfg
    with pytest.raises(ValueError, match="bad field"):
        Sparse24Config.parse("mma:bn64:zz3")


GEMV = [
    Sparse24Config("gemv", bn=4, bg=16, split_k=1),
    Sparse24Config("gemv", bn=8, bg=32, split_k=3),  # tile of 2 panels, serial reduction
    Sparse24Config("gemv", bn=4, bg=8, split_k=2, reduce="kernel", prefetch=False),
]
MMA = [
    Sparse24Config("mma", bn=16, bg=8, bm=16, split_k=1),
    Sparse24Config("mma", bn=32, bg=16, bm=16, split_k=3),
    Sparse24Config("mma", bn=16, bg=32, bm=32, split_k=2, reduce="kernel", prefetch=False),
]
# every config in fp16 at two M; fp32 and bf16 (upcast) once per kernel
CASES = ([(torch.float16, c, m) for c in GEMV for m in (1, 3)]
         + [(torch.float16, c, m) for c in MMA for m in (2, 33)]
         + [(dt, GEMV[1], 3) for dt in (torch.float32, torch.bfloat16)]
         + [(dt, MMA[1], 17) for dt in (torch.float32, torch.bfloat16)])


@pytest.mark.parametrize("dtype,cfg,m", CASES,
                         ids=lambda v: v.short() if hasattr(v, "short") else str(v))
def test_kernel_matches_reference(dtype, cfg, m):
    n, k = (20, 132) if m != 2 else (19, 36)  # N and K tails, 3 panels / 1 panel
    w = rand24(n, k, dtype, seed=m * 1000 + k)
    pn = to_panels(pack_24(w), 16)
    x = torch.randn(m, k).to(dtype)
    b = torch.randn(n).to(dtype)
    y = sparse24_mm(x.to(DEV), pn.values.to(DEV), pn.meta.to(DEV), k, b.to(DEV), cfg).cpu()
    exact = x.double() @ w.double().T + b.double()
    assert_rounded_equal(y, exact, dtype)


@pytest.mark.parametrize("cfg", [GEMV[1], MMA[1]], ids=lambda c: c.short())
def test_wrong_index_is_caught(cfg):
    """Flipping one nibble (group 0 of row 0 -> another valid index pair) changes exactly
    output column 0: the kernels really decode every group's indices."""
    m = 1 if cfg.kernel == "gemv" else 2
    w = rand24(20, 64, torch.float16, seed=3)
    pn = to_panels(pack_24(w), 16)
    x = torch.randn(m, 64).half().to(DEV)
    args = (x, pn.values.to(DEV))
    y = sparse24_mm(*args, pn.meta.to(DEV), 64, None, cfg).cpu()
    bad = pn.meta.clone()
    nib = int(bad[0, 0, 0]) & 0xF
    bad[0, 0, 0] = (int(bad[0, 0, 0]) & ~0xF) | (4 if nib != 4 else 14)
    yb = sparse24_mm(*args, bad.to(DEV), 64, None, cfg).cpu()
    assert not torch.allclose(yb[:, 0].float(), y[:, 0].float())
    assert torch.equal(yb[:, 1:], y[:, 1:])


def test_strided_and_misaligned_x():
    w = rand24(24, 64, torch.float16, seed=5)
    pn = to_panels(pack_24(w), 16)
    big = torch.randn(3, 80).half()
    exact_for = lambda x: x.double() @ w.double().T
    cfg = GEMV[0]
    for x in (big[:, :64], big[:, 2:66]):  # row stride 80; then a pointer 4 bytes off
        y = sparse24_mm(x.to(DEV), pn.values.to(DEV), pn.meta.to(DEV), 64, None, cfg).cpu()
        assert_rounded_equal(y, exact_for(x), torch.float16)


def test_launcher_refuses_bad_input():
    w = rand24(8, 64, torch.float16)
    pn = to_panels(pack_24(w), 16)
    x = torch.randn(5, 64).half()
    with pytest.raises(ValueError, match="M <= 4"):
        sparse24_mm(x, pn.values, pn.meta, 64, None, Sparse24Config("gemv"))
    with pytest.raises(ValueError, match="must be \\[M, 64\\]"):
        sparse24_mm(x[:, :32], pn.values, pn.meta, 64, None, Sparse24Config("mma"))
    with pytest.raises(ValueError, match="power of two"):
        sparse24_mm(x, pn.values, pn.meta, 64, None, Sparse24Config("mma", bg=12))
    assert sparse24_mm(x[:0], pn.values, pn.meta, 64).shape == (0, 8)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 2, 4, 7, 16, 31, 64, 255, 600])
def test_kernels_gpu_llama_like(dtype, m):
    """Every default config and a few splits on a 1024 x 2560 weight, native 16-bit dots,
    against fp64; split-K results are bitwise reproducible."""
    from sparsekit.kernels.sparse24_triton import default_config

    w = rand24(1024, 2560, dtype, seed=m).cuda()
    pn = to_panels(pack_24(w), 16)
    x = torch.randn(m, 2560, device="cuda", dtype=dtype)
    exact = x.double() @ w.double().T
    cfgs = [default_config(m), Sparse24Config("mma", bn=64, bg=16, bm=16, split_k=4,
                                              num_warps=8, num_stages=3)]
    if m <= 4:
        cfgs.append(Sparse24Config("gemv", bn=16, bg=64, split_k=3, num_warps=8))
    for cfg in cfgs:
        y = sparse24_mm(x, pn.values, pn.meta, 2560, None, cfg)
        assert rel(y, exact) < 1e-2, cfg.short()
        assert torch.equal(y, sparse24_mm(x, pn.values, pn.meta, 2560, None, cfg)), cfg.short()
