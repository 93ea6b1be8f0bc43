"""A weight update is its own plug-in, apart from the mask: `--update obs` refits the kept weights of
any method's mask (here Wanda's) from the Hessian, SparseGPT's way (each pruned column compensated
by the columns after it: between Wanda's kept weights and the least-squares optimum on the support)."""

import pytest
import torch

from conftest import tiny_model
from sparsekit.anatomy import prunable_linears
from sparsekit.calibration.stats import InputStats
from sparsekit.errors import UsageError
from sparsekit.pruning.pipeline import prune_linear, prune_model
from sparsekit.recipe import Calibration, make_recipe


def correlated(d=48, n=4, t=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, d, generator=g) @ torch.randn(d, d, generator=g) + 0.5
    stats = InputStats(d, hessian=True)
    stats.update(x)
    return x.reshape(-1, d), stats


def least_squares_on_support(w, x, mask):
    """Row by row: argmin ||x w_i^T - x v^T|| over v zero where the mask is set (closed form)."""
    out = torch.zeros_like(w, dtype=torch.float64)
    xd, wd = x.double(), w.double()
    for i in range(w.shape[0]):
        keep = ~mask[i]
        sol = torch.linalg.lstsq(xd[:, keep], xd @ wd[i], rcond=None).solution
        out[i, keep] = sol
    return out


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_obs_update_refits_wanda_mask(pattern):
    x, stats = correlated()
    lin = torch.nn.Linear(48, 16, bias=False)
    dense = lin.weight.detach().clone()
    recipe = make_recipe(method="wanda", pattern=pattern, update="obs", calibration=Calibration(data="x.txt"))
    plain = make_recipe(method="wanda", pattern=pattern, calibration=Calibration(data="x.txt"))
    ref_lin = torch.nn.Linear(48, 16, bias=False)
    ref_lin.weight.data.copy_(dense)
    prune_linear("l", ref_lin, plain, stats, plain.sparsity)
    prune_linear("l", lin, recipe, stats, recipe.sparsity)
    mask = ref_lin.weight == 0
    assert torch.equal(lin.weight == 0, mask)  # the same mask: the update only moves kept weights
    best = least_squares_on_support(dense, x, mask)
    err = lambda w: float(((x.double() @ (dense.double() - w.detach().double()).T) ** 2).sum())
    assert err(best) <= err(lin.weight) < 0.9 * err(ref_lin.weight)   # better than Wanda's kept weights


def test_update_is_recorded_and_checked():
    cal = Calibration(data="x.txt")
    doc = make_recipe(method="magnitude", update="obs", calibration=cal).to_json()
    assert doc["update"] == "obs" and list(doc).index("update") == list(doc).index("refine") + 1
    assert "update" not in make_recipe(method="sparsegpt", calibration=cal).to_json()  # auto: not written
    assert make_recipe(method="magnitude", update="obs", calibration=cal).needs_hessian
    with pytest.raises(UsageError, match="unknown --update 'admmx': use one of auto, obs"):
        make_recipe(method="wanda", update="admmx", calibration=cal)
    with pytest.raises(UsageError, match="--update refits pruned weights: give a --method other than none"):
        make_recipe(method="none", update="obs", activation="teal", calibration=cal)


def test_update_through_the_sequential_engine():
    model = tiny_model("llama")
    ids = torch.randint(3, 512, (4, 16), generator=torch.Generator().manual_seed(0))
    recipe = make_recipe(method="wanda", update="obs", calibration=Calibration(batch_size=2, data="x.txt"))
    run = prune_model(model, recipe, prunable_linears(model), calibration=ids)
    assert all(abs(r.achieved - 0.5) < 0.02 for r in run.layers)
