"""SparseGPT's block loop as one Triton kernel (compiled on a GPU, interpreted on CPU) against
the torch loop it replaces: same masks, same updated weights, same errors."""

import pytest
import torch

from sparsekit.calibration.stats import InputStats
from sparsekit.kernels.obs_triton import obs_block_
from sparsekit.pruning.sparsegpt import inverse_hessian_factor, sparsegpt_prune

from conftest import KERNEL_DEVICE as DEV


def correlated(rows, cols, tokens=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    x = torch.randn(tokens, cols, generator=g) @ mix
    stats = InputStats(cols, hessian=True)
    stats.update(x)
    return w, stats.hessian


def test_block_kernel_hand_case():
    # one row, two columns, U = [[2, 1], [0, 4]], prune column 0 only:
    # err0 = w0 / 2 = 3; w1 -= err0 * U01 -> 5 - 3 = 2; column 0 becomes exactly 0
    w = torch.tensor([[6.0, 5.0]], device=DEV)
    u = torch.tensor([[2.0, 1.0], [0.0, 4.0]], device=DEV)
    prune = torch.tensor([[True, False]], device=DEV)
    err, mask = obs_block_(w, u, u.diagonal(), prune=prune)
    assert w.cpu().tolist() == [[0.0, 2.0]]
    assert err.cpu().tolist() == [[3.0, 0.0]]
    assert mask.cpu().tolist() == [[True, False]]


@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8), (1, 3)])
@pytest.mark.parametrize("rows,cols,bs", [(37, 48, 16), (20, 60, 24), (9, 24, 24)])
def test_triton_block_loop_matches_torch(nm, rows, cols, bs):
    if nm is not None and (cols % nm[1] or bs % nm[1]):
        pytest.skip("pattern does not divide this shape")
    w, h = correlated(rows, cols, seed=rows + cols)
    ref = sparsegpt_prune(w, h, 0.5, nm=nm, blocksize=bs, backend="torch")
    got = sparsegpt_prune(w.to(DEV), h.to(DEV), 0.5, nm=nm, blocksize=bs, backend="triton")
    assert torch.equal(got.mask.cpu(), ref.mask)
    assert torch.equal(got.weight.cpu() == 0, ref.weight == 0)
    torch.testing.assert_close(got.weight.cpu(), ref.weight, rtol=1e-4, atol=1e-5)
    assert got.loss == pytest.approx(ref.loss, rel=1e-4)
    if nm is not None:
        groups = got.mask.cpu().reshape(rows, cols // nm[1], nm[1])
        assert (groups.sum(-1) == nm[0]).all()
    else:
        assert int(got.mask.sum()) == sum((rows * min(bs, cols - i)) // 2 for i in range(0, cols, bs))


def test_triton_block_loop_dead_columns_and_ties():
    w, h = correlated(16, 32, seed=3)
    for dead in (4, 5, 6):  # three dead input channels in one group: tied scores of 0
        h[dead, :] = 0
        h[:, dead] = 0
    for nm in (None, (2, 4)):
        ref = sparsegpt_prune(w, h, 0.5, nm=nm, blocksize=16, backend="torch")
        got = sparsegpt_prune(w.to(DEV), h.to(DEV), 0.5, nm=nm, blocksize=16, backend="triton")
        assert torch.equal(got.mask.cpu(), ref.mask)
        torch.testing.assert_close(got.weight.cpu(), ref.weight, rtol=1e-4, atol=1e-5)
    assert got.mask[:, 4:7].cpu().tolist() == [[True, True, False]] * 16  # lower index first


def test_block_kernel_refuses_bad_arguments():
    w, h = correlated(4, 8)
    u = inverse_hessian_factor(h)[0].contiguous()
    with pytest.raises(ValueError, match="either"):
        obs_block_(w.clone(), u, u.diagonal())
    with pytest.raises(ValueError, match="groups"):
        obs_block_(w[:, :6].clone(), u[:6, :6], u.diagonal()[:6], inv_d2=torch.ones(6), nm=(2, 4))
    with pytest.raises(ValueError, match="backend"):
        sparsegpt_prune(w, h, 0.5, backend="cuda")


def test_unstructured_ties_prune_the_lower_row_major_index_first():
    w = torch.ones(8, 32)
    h = torch.eye(32)  # every score equal
    for backend, dev in (("torch", "cpu"), ("triton", DEV)):
        res = sparsegpt_prune(w.to(dev), h.to(dev), 0.5, blocksize=16, backend=backend)
        expected = torch.zeros(8, 32, dtype=torch.bool)
        expected[:4] = True  # in each block of 8 x 16, the first 64 entries in row-major order
        assert torch.equal(res.mask.cpu(), expected), backend
