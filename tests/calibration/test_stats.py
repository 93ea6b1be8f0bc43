"""InputStats: accumulated statistics equal direct computation on the pooled data."""

from __future__ import annotations

import pytest
import torch

from sparsekit.calibration.stats import InputStats

D = 12


def _batches():
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(2, 7, D, generator=g) * 3 + 1,  # 2 sequences
        torch.randn(1, 5, D, generator=g),  # 1 sequence
        torch.randn(9, D, generator=g) - 2,  # 2-D: one sequence of 9 tokens
        torch.randn(2, 2, 3, D, generator=g).to(torch.bfloat16),  # 4-D: 4 sequences
    ]


def _direct(batches):
    """Reference statistics in fp64 from the concatenated tokens."""
    toks = torch.cat([b.reshape(-1, D).double() for b in batches])
    nseq = sum(b.reshape(-1, b.shape[-2], D).shape[0] if b.dim() >= 3 else 1 for b in batches)
    return {
        "nsamples": nseq,
        "ntokens": toks.shape[0],
        "sq_norm": (toks**2).sum(0) / nseq,
        "mean": toks.mean(0),
        "var": toks.var(0, unbiased=False),
        "hessian": 2.0 / nseq * toks.T @ toks,
    }


def _accumulate(batches, hessian=True):
    s = InputStats(D, hessian=hessian)
    for b in batches:
        s.update(b)
    return s


def _assert_matches(s: InputStats, ref: dict, rtol=1e-5, atol=1e-5):
    assert s.nsamples == ref["nsamples"]
    assert s.ntokens == ref["ntokens"]
    for k in ("sq_norm", "mean", "var", "hessian"):
        got = getattr(s, k)
        assert got.dtype == torch.float32, k
        torch.testing.assert_close(got.double(), ref[k], rtol=rtol, atol=atol, msg=k)


def test_matches_direct_computation_over_mixed_batches():
    batches = _batches()
    s = _accumulate(batches)
    ref = _direct(batches)
    assert (s.nsamples, s.ntokens) == (2 + 1 + 1 + 4, 14 + 5 + 9 + 12)
    _assert_matches(s, ref)


def test_sq_norm_is_running_mean_over_sequences_not_tokens():
    s = InputStats(2)
    s.update(torch.ones(1, 10, 2))  # one sequence, 10 tokens of 1.0 -> per-sequence sum 10
    s.update(torch.zeros(3, 4, 2))  # three all-zero sequences
    torch.testing.assert_close(s.sq_norm, torch.full((2,), 10.0 / 4))
    torch.testing.assert_close(s.mean, torch.full((2,), 10.0 / 22))


def test_variance_is_numerically_stable_with_large_offset():
    g = torch.Generator().manual_seed(1)
    batches = [1.0e4 + torch.randn(1, 300, D, generator=g) for _ in range(5)]
    s = _accumulate(batches, hessian=False)
    ref = _direct(batches)
    # E[x^2] - E[x]^2 in fp32 would be off by O(1) here; the true variance is ~1.
    torch.testing.assert_close(s.var.double(), ref["var"], rtol=2e-3, atol=0)
    assert s.hessian is None


def test_merge_equals_single_pass():
    batches = _batches()
    a = _accumulate(batches[:2])
    b = _accumulate(batches[2:])
    a.merge(b)
    _assert_matches(a, _direct(batches))

    empty = InputStats(D, hessian=True)
    empty.merge(_accumulate(batches))
    _assert_matches(empty, _direct(batches))


def test_merge_rejects_incompatible():
    with pytest.raises(ValueError, match="in_features"):
        InputStats(D).merge(InputStats(D + 1))
    with pytest.raises(ValueError, match="hessian"):
        InputStats(D, hessian=True).merge(InputStats(D))


def test_state_dict_round_trip_and_continue(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    batches = _batches()
    s = _accumulate(batches[:3])
    sd = s.state_dict()
    assert {"version", "nsamples", "ntokens", "sq_norm", "mean", "m2", "hessian"} <= set(sd)
    path = tmp_path / "stats.safetensors"
    safetensors.save_file(sd, str(path))
    r = InputStats.from_state_dict(safetensors.load_file(str(path)))
    for k in ("sq_norm", "mean", "var", "hessian"):
        assert torch.equal(getattr(r, k), getattr(s, k)), k
    # Both continue identically and still match the direct computation.
    r.update(batches[3])
    _assert_matches(r, _direct(batches))


def test_state_without_hessian_and_bad_state():
    s = _accumulate(_batches(), hessian=False)
    sd = s.state_dict()
    assert "hessian" not in sd
    assert InputStats.from_state_dict(sd).hessian is None
    del sd["m2"]
    with pytest.raises(ValueError, match="m2"):
        InputStats.from_state_dict(sd)


def test_shapes_and_empty_inputs():
    s = InputStats(D, hessian=True)
    assert s.nsamples == 0 and torch.equal(s.var, torch.zeros(D))
    s.update(torch.zeros(0, 4, D))  # no tokens: ignored
    assert (s.nsamples, s.ntokens) == (0, 0)
    with pytest.raises(ValueError, match=str(D)):
        s.update(torch.zeros(3, D + 1))
    s.update(torch.ones(D))  # a single token vector: one sequence
    assert (s.nsamples, s.ntokens) == (1, 1)
    torch.testing.assert_close(s.hessian, torch.full((D, D), 2.0))


def _round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> TF32 (10 mantissa bits, round to nearest even), emulated on the bits."""
    bits = x.float().view(torch.int32)
    lsb = (bits >> 13) & 1
    return ((bits + 0xFFF + lsb) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_values_are_exact_in_tf32(dtype):
    from sparsekit.calibration.stats import tf32_is_exact

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(100_000, generator=g) * torch.logspace(-6, 4, 100_000)).to(dtype).float()
    x = torch.cat([x, torch.tensor([torch.finfo(dtype).max, torch.finfo(dtype).tiny, 0.0]).to(dtype).float()])
    assert tf32_is_exact(dtype)
    assert torch.equal(_round_to_tf32(x), x)
    # while plain fp32 values are not: the claim is specific to 16-bit inputs
    y = torch.randn(1000, generator=g)
    assert not tf32_is_exact(torch.float32) and not torch.equal(_round_to_tf32(y), y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hessian_of_bf16_inputs_on_tf32_matches_fp64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 256, 512, generator=g).to(torch.bfloat16)
    stats = InputStats(512, hessian=True, device="cuda")
    stats.update(x.cuda())
    ref = 2 * x.double().reshape(-1, 512).T @ x.double().reshape(-1, 512) / 4
    torch.testing.assert_close(stats.hessian.double().cpu(), ref, rtol=1e-5, atol=1e-3)
