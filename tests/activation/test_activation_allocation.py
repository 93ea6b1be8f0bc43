"""Greedy per-site allocation: optimal on separable convex errors, exact effective sparsity,
ties, TEAL increments, and better than uniform on a real block."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import tiny_model

from sparsekit.activation.allocation import block_output_error, effective_sparsity, greedy_allocation
from sparsekit.activation.plan import plan_activation
from sparsekit.activation.calibrate import greedy_block_sparsities


def test_optimal_on_separable_convex_errors():
    a = {"q": 1.0, "k": 4.0, "v": 0.5}
    err = lambda p: sum(a[c] * p[c] ** 2 for c in p)
    w = {c: 1.0 for c in a}
    res = greedy_allocation(list(a), w, err, 0.4, step=0.1)
    # brute force over the 0.1 grid with mean 0.4 (12 increments in all)
    best = min((p for p in itertools.product(range(11), repeat=3) if sum(p) == 12),
               key=lambda p: sum(a[c] * (x / 10) ** 2 for c, x in zip(a, p)))
    assert [round(res.sparsities[c] * 10) for c in a] == list(best)
    assert effective_sparsity(res.sparsities, w) == pytest.approx(0.4, abs=1e-12)
    assert res.evaluations == 1 + 3 * 12  # one baseline, one trial per site per step


def test_weights_and_trimmed_last_step():
    w = {"small": 1.0, "big": 3.0}
    err = lambda p: p["small"] ** 2 + 0.1 * p["big"] ** 2
    res = greedy_allocation(["small", "big"], w, err, 0.37, step=0.05)
    assert effective_sparsity(res.sparsities, w) == pytest.approx(0.37, abs=1e-12)
    # error per skipped weight of "big" is 30x lower at equal sparsity: it takes most
    assert res.sparsities["big"] > res.sparsities["small"]
    assert res.path[-1][1] == pytest.approx(0.37)
    assert res.error == pytest.approx(err(res.sparsities))


def test_ties_go_to_the_first_site_and_caps():
    res = greedy_allocation(["a", "b"], {"a": 1, "b": 1}, lambda p: 0.0, 0.25, step=0.25)
    assert res.sparsities == {"a": 0.5, "b": 0.0}
    capped = greedy_allocation(["a", "b"], {"a": 1, "b": 1}, lambda p: 0.0, 0.5, step=0.25, max_sparsity=0.5)
    assert capped.sparsities == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="max_sparsity"):
        greedy_allocation(["a"], {"a": 1}, lambda p: 0.0, 0.6, max_sparsity=0.5)


def test_teal_equal_weight_increments():
    seen = []

    def err(p):
        seen.append(dict(p))
        return 0.0

    greedy_allocation(["q", "gate"], {"q": 1.0, "gate": 4.0}, err, 0.01, step=0.2, equal_weights=True)
    trials = seen[1:3]
    assert trials[0] == {"q": 0.2, "gate": 0.0} and trials[1] == {"q": 0.0, "gate": 0.05}


def test_block_output_error_is_teals():
    y = torch.zeros(2, 8, 3)
    yh = y.clone()
    yh[0, 6:, 0] = torch.tensor([3.0, 4.0])  # norm over the last quarter of tokens: 5
    yh[1, 1, 2] = 100.0                     # outside the last quarter: ignored
    assert block_output_error(y, yh) == pytest.approx(5 / 6)


def test_greedy_beats_uniform_on_a_block():
    model = tiny_model("llama")
    ids = torch.randint(3, 500, (2, 64), generator=torch.Generator().manual_seed(0))
    layer = model.model.layers[0]
    call = {}
    handle = layer.register_forward_pre_hook(lambda m, a, kw: call.update(args=a, kwargs=kw), with_kwargs=True)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    handle.remove()

    def run_block():  # the engine's role: the block on its cached calibration inputs
        out = layer(*call["args"], **call["kwargs"])
        return out[0] if isinstance(out, tuple) else out

    plan = plan_activation(model, "teal")
    res = greedy_block_sparsities(model, plan, 0, run_block, 0.5, step=0.1)
    weights = {s.name: s.params for s in plan.layer_sites(0)}
    assert effective_sparsity(res.sparsities, weights) == pytest.approx(0.5, abs=1e-9)
    assert len({round(v, 6) for v in res.sparsities.values()}) > 1  # not uniform
    # the uniform split at the same effective sparsity, scored the same way
    from sparsekit.activation.calibrate import install_sites
    from sparsekit.activation.collect import SketchCollector
    from sparsekit.activation.plan import Plan
    from sparsekit.activation.sites import site_thresholds

    sites = plan.layer_sites(0)
    wrappers = install_sites(model, sites)
    with torch.no_grad():
        y_ref = run_block()
        with SketchCollector(model, {s.point: plan.points[s.point] for s in sites}) as col:
            run_block()
        cal = site_thresholds(model, Plan("teal", sites, plan.points), col.sketches)
        for name, m in wrappers.items():
            m.set_threshold(*cal[name](0.5)[:2])
            m.enabled = True
        uniform = block_output_error(y_ref, run_block())
    assert res.error < uniform
