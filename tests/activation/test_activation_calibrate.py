"""End to end on tiny random models and real text: plans, measured sparsity vs target, WINA's
column norms."""

from __future__ import annotations

import pytest
import torch
from conftest import data_file, tiny_model

from sparsekit.activation.collect import SketchCollector
from sparsekit.activation.plan import plan_activation
from sparsekit.activation.sites import compute_thresholds
from sparsekit.activation.thresholds import column_norms
from sparsekit.activation.calibrate import calibrate_sites
from sparsekit.runtime.act_sparse import activation_modules, remove_activation_sparsity


@pytest.fixture(scope="module")
def calib_ids(tiny_tokenizer):
    text = data_file("test").read_text(encoding="utf-8")[:60000]
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"][: 3 * 96]
    return torch.tensor(ids).reshape(3, 96)


def _run(model, ids):
    def run():
        for b in ids.split(2):  # two batches: sketches accumulate across calls
            model(input_ids=b, use_cache=False)
    return run


def _dense_sketches(model, ids, points):
    """Sketches of `points` over plain forwards of the whole model (nothing sparsified), by the
    collector the calibration uses."""
    with torch.no_grad(), SketchCollector(model, points) as col:
        _run(model, ids)()
    return col.sketches


def _site_names(plan, layer=0):
    return [s.name.split(".", 3)[-1] for s in plan.layer_sites(layer)]


def test_plans_per_method_and_architecture():
    llama = tiny_model("llama")
    assert _site_names(plan_activation(llama, "teal")) == [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    chess = plan_activation(llama, "chess")
    assert _site_names(chess) == ["self_attn.q_proj", "self_attn.o_proj", "mlp.act_fn"]
    act = chess.layer_sites(0)[-1]
    assert act.where == "output" and act.mu_point == "model.layers.0.mlp.up_proj:output"
    assert act.params == 2 * 64 * 128
    teal = plan_activation(llama, "teal")
    assert {s.point for s in teal.layer_sites(0)} == {
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.o_proj",
        "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.down_proj"}
    opt = tiny_model("opt")
    assert [n.split(".", 4)[-1] for n in (s.name for s in plan_activation(opt, "chess").layer_sites(0))] == [
        "self_attn.q_proj", "self_attn.out_proj", "fc2"]
    phi3 = tiny_model("phi3")
    assert _site_names(plan_activation(phi3, "teal")) == [
        "self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]
    pc = plan_activation(phi3, "chess")
    assert _site_names(pc) == ["self_attn.o_proj", "mlp.activation_fn"]
    assert pc.points["model.layers.0.mlp.gate_up_proj:output"].out_slice == (128, 256)


@pytest.mark.parametrize("arch,method,target", [
    ("llama", "teal", 0.5), ("llama", "wina", 0.65), ("llama", "chess", 0.5),
    ("opt", "chess", 0.65), ("gemma3", "teal", 0.25), ("qwen3", "wina", 0.4)])
def test_measured_sparsity_within_two_points_of_target(arch, method, target, calib_ids):
    model = tiny_model(arch)
    plan = plan_activation(model, method)
    _, sites = calibrate_sites(model, plan, _run(model, calib_ids), target)
    assert set(sites) == {s.name for s in plan.sites}
    for m in activation_modules(model).values():
        m.reset_counters()
    with torch.no_grad():
        _run(model, calib_ids)()
    for name, m in activation_modules(model).items():
        assert abs(m.zeroed_fraction - target) <= 0.02, (name, m.zeroed_fraction)
        assert sites[name]["bounds"][0] <= sites[name]["calibrated"] <= sites[name]["bounds"][1]


def test_staged_first_stage_equals_dense_thresholds(calib_ids):
    """Layer 0's q/k/v inputs have nothing sparsified upstream: staged == dense thresholds."""
    model = tiny_model("llama")
    plan = plan_activation(model, "teal")
    dense, _ = compute_thresholds(model, plan, _dense_sketches(model, calib_ids, plan.points), 0.5)
    staged, _ = calibrate_sites(model, plan, _run(model, calib_ids), 0.5)
    for leaf in ("q_proj", "k_proj", "v_proj"):
        key = f"model.layers.0.self_attn.{leaf}.threshold"
        assert torch.equal(staged[key], dense[key])
    # later stages see sparsified inputs, so their thresholds move
    key = "model.layers.0.self_attn.o_proj.threshold"
    assert not torch.equal(staged[key], dense[key])
    remove_activation_sparsity(model)


def test_wina_uses_every_linear_column_norm(calib_ids):
    model = tiny_model("llama")
    plan = plan_activation(model, "wina")
    sketches = _dense_sketches(model, calib_ids, plan.points)
    tensors, _ = compute_thresholds(model, plan, sketches, 0.5)
    for site in plan.sites:
        weight = model.get_submodule(site.name).weight
        assert torch.equal(tensors[f"{site.name}.scale"], column_norms(weight)), site.name
    q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
    assert not torch.equal(tensors[f"{q}.threshold"], tensors[f"{k}.threshold"])  # same input, own norms
    # pruning one column of k_proj changes k's scale and threshold only
    with torch.no_grad():
        model.get_submodule(k).weight[:, 3] = 0
    after, _ = compute_thresholds(model, plan, sketches, 0.5)
    assert after[f"{k}.scale"][3] == 0 and not torch.equal(after[f"{k}.threshold"], tensors[f"{k}.threshold"])
    assert torch.equal(after[f"{q}.threshold"], tensors[f"{q}.threshold"])
