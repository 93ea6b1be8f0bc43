"""Pruning through the sequential engine on tiny random models: the engine reproduces the model at
sparsity 0, each layer is pruned on the outputs of the pruned layers before it, N:M and
unstructured counts are exact, offloaded weights prune like the CPU (the engine alone:
tests/calibration/test_engine.py; the prune command: tests/cli/test_cli_prune.py)."""

import pytest
import torch

from conftest import ARCHS, layer_outputs, tiny_model
from sparsekit.anatomy import decoder_layers, prunable_linears
from sparsekit.pruning.masks import wanda_mask
from sparsekit.recipe import Calibration, make_recipe
from sparsekit.pruning.pipeline import prune_model


def recipe(method, sparsity=None, pattern="unstructured", batch=8, **kw):
    return make_recipe(method=method, sparsity=sparsity, pattern=pattern, calibration=Calibration(batch_size=batch), **kw)


def calib_ids(n=5, seqlen=16, seed=0):
    return torch.randint(3, 512, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_at_sparsity_zero_reproduces_the_model(arch):
    """Layer by layer, the engine's activations equal those of one full forward of the model."""
    model = tiny_model(arch)
    ids = calib_ids()
    reference = layer_outputs(model, lambda: model(input_ids=ids, use_cache=False))
    spec = recipe("wanda", 0.0, batch=2)
    targets = prunable_linears(model)
    before = {n: lin.weight.clone() for n, lin in targets.items()}
    engine = layer_outputs(model, lambda: prune_model(model, spec, targets, calibration=ids))
    for i, ref in reference.items():
        # the engine runs each layer on batches of 2, 2, 1, twice (statistics, then recompute),
        # except the last layer which is not recomputed (argument capture passes through the
        # hooks of all but the last layer once per batch size, before)
        expected = 3 if i == len(reference) - 1 else 6
        calls = engine[i][-expected:]
        assert len(engine[i]) == expected + (0 if expected == 3 else 2)
        assert torch.allclose(torch.cat(calls[:3]), ref[0], atol=1e-5, rtol=1e-4), f"layer {i}"
        if len(calls) == 6:
            assert torch.allclose(torch.cat(calls[3:]), ref[0], atol=1e-5, rtol=1e-4)
    assert all(torch.equal(before[n], lin.weight) for n, lin in targets.items())


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_wanda_in_the_engine_uses_each_layers_own_inputs(arch):
    """Layer 0 sees the dense inputs; layer 1 sees the outputs of the pruned layer 0."""
    model = tiny_model(arch)
    ids = calib_ids(4, 16)
    _, layers = decoder_layers(model)
    q0, q1 = layers[0].self_attn.q_proj, layers[1].self_attn.q_proj
    captured = {}
    h = q0.register_forward_hook(lambda m, a, o: captured.setdefault("x0", a[0].detach().clone()))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    h.remove()
    x0 = captured["x0"]
    expected0 = wanda_mask(q0.weight, x0.pow(2).sum(dim=(0, 1)) / x0.shape[0], 0.5)
    w1_dense = q1.weight.detach().clone()

    # layer 1's q_proj input after layer 0 is pruned, computed by hand
    def layer1_input():
        got = {}
        hook = q1.register_forward_hook(lambda m, a, o: got.setdefault("x", a[0].detach().clone()))
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        hook.remove()
        return got["x"]

    targets = prunable_linears(model, targets=r"layers\.[01]\.self_attn\.q_proj")
    layer0_only = {k: v for k, v in targets.items() if ".0." in k}
    prune_model(model, recipe("wanda", 0.5, batch=4), layer0_only, calibration=ids)
    assert torch.equal(q0.weight == 0, expected0)
    x1 = layer1_input()
    expected1 = wanda_mask(w1_dense, x1.pow(2).sum(dim=(0, 1)) / x1.shape[0], 0.5)
    # now the full sequential run on a fresh copy must reproduce both masks
    fresh = tiny_model(arch)
    prune_model(fresh, recipe("wanda", 0.5, batch=3), prunable_linears(fresh, targets=r"layers\.[01]\.self_attn\.q_proj"),
                calibration=ids)
    _, fresh_layers = decoder_layers(fresh)
    assert torch.equal(fresh_layers[0].self_attn.q_proj.weight == 0, expected0)
    assert torch.equal(fresh_layers[1].self_attn.q_proj.weight == 0, expected1)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_patterns_are_exact(method, pattern):
    n, m = map(int, pattern.split(":"))
    model = tiny_model("qwen3")
    targets = prunable_linears(model)
    run = prune_model(model, recipe(method, pattern=f"{n}:{m}", batch=2), targets, calibration=calib_ids())
    assert len(run.layers) == len(targets)
    for name, lin in targets.items():
        groups = (lin.weight == 0).reshape(-1, m).sum(dim=1)
        assert (groups == n).all(), name


def test_unstructured_wanda_is_exact_per_row_and_sparsegpt_per_matrix():
    model = tiny_model("mistral")
    targets = prunable_linears(model)
    prune_model(model, recipe("wanda", 0.3, batch=5), targets, calibration=calib_ids())
    for name, lin in targets.items():
        per_row = (lin.weight == 0).sum(dim=1)
        assert (per_row == int(lin.in_features * 0.3)).all(), name
    model = tiny_model("mistral")
    targets = prunable_linears(model)
    prune_model(model, recipe("sparsegpt", 0.5, batch=5), targets, calibration=calib_ids())
    for name, lin in targets.items():
        assert (lin.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("offload_activations", [True, False])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_offloaded_weights_prune_like_the_cpu(method, offload_activations):
    """Weights in CPU memory, one layer at a time on the GPU, activations pinned on the CPU or
    kept on the GPU: the same masks as pruning on the CPU (up to a few near-ties)."""
    ids = calib_ids(6, 32)
    spec = recipe(method, 0.5, batch=4)
    cpu_model, gpu_model = tiny_model("llama"), tiny_model("llama")
    prune_model(cpu_model, spec, prunable_linears(cpu_model), calibration=ids)
    prune_model(gpu_model, spec, prunable_linears(gpu_model), calibration=ids,
                device="cuda", offload_activations=offload_activations)
    assert next(gpu_model.parameters()).device.type == "cpu"  # moved back after each layer
    for (name, a), b in zip(prunable_linears(cpu_model).items(), prunable_linears(gpu_model).values()):
        agree = ((a.weight == 0) == (b.weight == 0)).float().mean().item()
        assert agree > 0.995, (name, agree)
        assert int((a.weight == 0).sum()) == int((b.weight == 0).sum()), name
