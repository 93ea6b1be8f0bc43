"""The pruning seam end to end: plan (uniform, OWL, DLP, a file) -> select -> refine (DSnoT) -> apply
(on the command line: tests/cli/test_cli_prune.py, tests/cli/test_cli_calibrate.py)."""

import pytest
import torch

from conftest import tiny_model
from sparsekit.calibration.stats import InputStats
from sparsekit.anatomy import prunable_linears
from sparsekit.pruning.allocation import weighted_mean
from sparsekit.pruning.pipeline import group_by_layer, prune_model
from sparsekit.recipe import Calibration, make_recipe
from sparsekit.pruning.sparsegpt import sparsegpt_prune


def ids(n=6, seqlen=16, seed=0):
    return torch.randint(3, 512, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def recipe(**kw):
    return make_recipe(calibration=Calibration(batch_size=3), **kw)


@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sparsegpt_with_its_own_mask_fixed_reproduces_itself(nm, backend):
    """The fixed-mask OBS update (used after a refiner) equals SparseGPT's run for that mask."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 32, 64, generator=g) @ torch.randn(64, 64, generator=g)
    stats = InputStats(64, hessian=True)
    stats.update(x)
    w = torch.randn(24, 64, generator=g)
    first = sparsegpt_prune(w, stats.hessian, 0.5, nm, blocksize=32, backend=backend)
    again = sparsegpt_prune(w, stats.hessian, 0.5, nm, blocksize=32, backend=backend, mask=first.mask)
    assert torch.equal(again.mask, first.mask)
    assert torch.allclose(again.weight, first.weight, atol=1e-5, rtol=1e-5)
    # another mask: exactly those entries are zero
    other = torch.rand(24, 64, generator=g) < 0.3
    fixed = sparsegpt_prune(w, stats.hessian, 0.5, None, blocksize=32, backend=backend, mask=other)
    assert torch.equal(fixed.mask, other) and torch.equal(fixed.weight[other], torch.zeros(int(other.sum())))


@pytest.mark.parametrize("method, pattern", [("wanda", "unstructured"), ("wanda", "2:4"), ("magnitude", "unstructured"),
                                             ("sparsegpt", "unstructured"), ("sparsegpt", "4:8")])
def test_dsnot_in_the_engine_keeps_counts_and_patterns(method, pattern):
    model, plain = tiny_model("llama"), tiny_model("llama")
    r_plain = recipe(method=method, pattern=pattern, sparsity=None if pattern != "unstructured" else 0.5)
    r_dsnot = recipe(method=method, pattern=pattern, sparsity=None if pattern != "unstructured" else 0.5,
                     refine="dsnot")
    prune_model(plain, r_plain, prunable_linears(plain), calibration=ids())
    run = prune_model(model, r_dsnot, prunable_linears(model), calibration=ids())
    assert all(r.swaps is not None for r in run.layers) and sum(r.swaps for r in run.layers) > 0
    changed = 0
    for (name, lin), (_, ref) in zip(prunable_linears(model).items(), prunable_linears(plain).items()):
        zeros, ref_zeros = (lin.weight == 0), (ref.weight == 0)
        if method == "wanda" or pattern != "unstructured":  # exact per-row counts (Wanda, N:M)
            assert torch.equal(zeros.sum(dim=1), ref_zeros.sum(dim=1)), name
        else:
            assert int(zeros.sum()) == int(ref_zeros.sum()), name
        if pattern != "unstructured":
            n, m = map(int, pattern.split(":"))
            assert (zeros.view(zeros.shape[0], -1, m).sum(dim=-1) == n).all(), name
        changed += int((zeros != ref_zeros).sum())
    assert changed > 0  # DSnoT did swap something


def test_dsnot_skip_leaves_matching_layers_as_selected():
    model, plain = tiny_model("llama"), tiny_model("llama")
    prune_model(plain, recipe(method="wanda"), prunable_linears(plain), calibration=ids())
    run = prune_model(model, recipe(method="wanda", refine="dsnot", dsnot_skip=r"mlp\."), prunable_linears(model),
                      calibration=ids())
    for r in run.layers:
        assert (r.swaps is None) == (".mlp." in r.name)
    # layer 0's mlp sees identical inputs either way: the same mask as plain Wanda
    for name in ("model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"):
        assert torch.equal(model.get_submodule(name).weight == 0, plain.get_submodule(name).weight == 0)


@pytest.mark.parametrize("kind", ["owl", "dlp"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_layerwise_allocation_hits_the_weighted_target(kind, arch):
    model = tiny_model(arch)
    targets = prunable_linears(model, ignore=r"layers\.0\.self_attn\.q_proj")  # unequal layer sizes
    run = prune_model(model, recipe(method="wanda", sparsity=0.6, layerwise=kind), targets, calibration=ids())
    groups = group_by_layer(model, targets)
    params = [sum(targets[n].weight.numel() for n in names) for names in groups.values()]
    planned = [run.allocation[layer] for layer in groups]
    assert abs(weighted_mean(planned, params) - 0.6) < 1e-3
    assert len(set(round(v, 6) for v in planned)) > 1 and all(0 <= v < 1 for v in planned)
    achieved = [sum(int((targets[n].weight == 0).sum()) for n in names) / p for names, p in zip(groups.values(), params)]
    # each row prunes floor(in_features * s): below the plan by less than one weight per row
    assert all(0 <= b - a < 1 / 64 for a, b in zip(achieved, planned))
    assert set(run.layer_values) == set(groups)
