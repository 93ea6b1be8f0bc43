"""ActivationSketch: exact binning on hand-built values, merge == single pass, bounded memory,
state round trips."""

from __future__ import annotations

import math

import pytest
import torch

from sparsekit.activation.sketch import ActivationSketch, sketch_bytes


def _bins_of(values, **grid):
    """Bin index of each value of a 1-channel sketch fed with that single value."""
    out = []
    for v in values:
        s = ActivationSketch(1, **grid)
        s.update(torch.tensor([[v]], dtype=torch.float32))
        out.append(int(s.counts[0].nonzero().item()))
    return out


def test_bins_are_right_closed_on_exact_edges():
    # default grid: bin 0 = {0}, bin 1 = (0, 2^-20], then 4 bins per octave, (2^16, inf) last
    s = ActivationSketch(1)
    assert s.bins == 3 + 36 * 4
    lo = 2.0**-20
    f32_up = lambda x: float(torch.tensor(x, dtype=torch.float32).view(torch.int32).add(1).view(torch.float32))
    values = [0.0, -0.0, 1e-40, lo, f32_up(lo), 1.0, f32_up(1.0), 1.25, f32_up(1.25), 2.0**16, f32_up(2.0**16),
              float("inf")]
    # 1.0 = 2^0 is the top of the bin (2^-0.25-ish .. 1]: octave -1 ends at bin 2 + 19*4 + 3
    one_bin = 2 + 19 * 4 + 3
    expected = [0, 0, 1, 1, 2, one_bin, one_bin + 1, one_bin + 1, one_bin + 2, s.bins - 2, s.bins - 1, s.bins - 1]
    assert _bins_of(values) == expected
    # lower edges: bin k spans (edges[k], edges[k+1]]
    e = s.edges()
    assert e[2] == lo and e[one_bin + 1] == 1.0 and e[one_bin + 2] == 1.25 and e[-1] == 2.0**16


def test_signs_and_dtypes_bin_by_magnitude():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g).to(torch.bfloat16)
    a, b = ActivationSketch(6), ActivationSketch(6)
    a.update(x)
    b.update(-x.float())
    assert torch.equal(a.counts, b.counts)
    assert torch.equal(a.max_abs, x.float().abs().amax(0))
    assert torch.allclose(a.mean_abs, x.double().abs().mean(0))


def test_histogram_counts_match_direct_bucketing():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 40, 5, generator=g) * torch.tensor([1e-4, 1e-2, 1.0, 30.0, 1e5])
    x[0, :7, 1] = 0.0
    s = ActivationSketch(5, mantissa_bits=3, min_exp=-16, max_exp=12)
    s.update(x)
    # independent bucketing with searchsorted on the float64 edges (right-closed bins)
    tops = torch.cat([s.edges()[1:], torch.tensor([math.inf], dtype=torch.float64)])
    flat = x.reshape(-1, 5).double().abs()
    for c in range(5):
        idx = torch.searchsorted(tops, flat[:, c].contiguous(), right=False)
        assert torch.equal(s.counts[c].long(), torch.bincount(idx, minlength=s.bins)), c
    assert s.counts[1, 0] == 7 and s.ntokens == 120


def test_merge_equals_single_pass_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    parts = [torch.randn(2, 9, 8, generator=g) * 3, torch.randn(17, 8, generator=g).half(),
             torch.randn(1, 4, 8, generator=g).abs() * 1e6]
    single = ActivationSketch(8)
    for p in parts:
        single.update(p)
    left, right = ActivationSketch(8), ActivationSketch(8)
    left.update(parts[0])
    right.update(parts[1])
    right.update(parts[2])
    left.merge(right)
    a, b = single.state_dict(), left.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(ValueError, match="same channels and grid"):
        left.merge(ActivationSketch(8, mantissa_bits=3))


def test_memory_is_bounded_and_documented():
    s = ActivationSketch(300)
    before = s.nbytes()
    for _ in range(3):
        s.update(torch.randn(2000, 300))
    assert s.nbytes() == before == sketch_bytes(300) == 300 * 600
    # the Llama-3-8B numbers of the module docstring
    per_layer = sketch_bytes(4096) * 3 + sketch_bytes(14336)
    assert per_layer * 32 == 511_180_800
    assert (per_layer + sketch_bytes(14336)) * 32 == 786_432_000
    assert sketch_bytes(10, histogram=False) == 120


def test_state_dict_round_trip_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    s = ActivationSketch(7, mantissa_bits=1, min_exp=-10, max_exp=10)
    s.update(torch.randn(33, 7) * 100)
    save_file(s.state_dict(), tmp_path / "s.safetensors")
    back = ActivationSketch.from_state_dict(load_file(tmp_path / "s.safetensors"))
    assert back.config() == s.config() and back.ntokens == 33
    for k, v in s.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    light = ActivationSketch(4, histogram=False)
    light.update(torch.ones(3, 4))
    back = ActivationSketch.from_state_dict(light.state_dict())
    assert not back.has_histogram and torch.equal(back.mean_abs, torch.ones(4, dtype=torch.float64))


def test_rejects_wrong_width():
    with pytest.raises(ValueError, match="last dim 4"):
        ActivationSketch(4).update(torch.zeros(2, 5))
