"""The sequential calibration engine on tiny random models: each layer's statistics equal those of
one full forward, attention masks the capture may drop, where activations live when weights are
offloaded."""

import pytest
import torch

from conftest import layer_outputs, tiny_model
from sparsekit.anatomy import prunable_linears
from sparsekit.calibration.engine import run_sequential
from sparsekit.pruning.pipeline import prune_model
from sparsekit.recipe import Calibration, make_recipe


def recipe(method, sparsity=None, pattern="unstructured", batch=8, **kw):
    return make_recipe(method=method, sparsity=sparsity, pattern=pattern, calibration=Calibration(batch_size=batch), **kw)


def calib_ids(n=5, seqlen=16, seed=0):
    return torch.randint(3, 512, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seqlen", [8, 16])
def test_sliding_mask_covering_the_window_is_dropped_with_the_same_result(seqlen):
    """Gemma-3 tiny has an 8-token window: at seqlen 8 its sliding mask is plainly causal and is
    replaced by SDPA's causal path; at 16 it is kept. Either way the engine reproduces the model."""
    from sparsekit.calibration.capture import capture_layer_calls

    model = tiny_model("gemma3")
    ids = calib_ids(3, seqlen)
    calls = capture_layer_calls(model, [ids])
    masks = [kw.get("attention_mask") for _, kw in calls.args[3]]
    assert masks[1] is None  # full attention layer: causal, handled by SDPA
    assert (masks[0] is None) == (seqlen == 8)
    reference = layer_outputs(model, lambda: model(input_ids=ids, use_cache=False))
    targets = prunable_linears(model)
    engine = layer_outputs(model, lambda: prune_model(model, recipe("wanda", 0.0, batch=3), targets,
                                                      calibration=ids))
    for i, ref in reference.items():
        assert torch.allclose(engine[i][-1], ref[0], atol=1e-5, rtol=1e-4)


def test_causal_mask_is_kept_for_eager_attention():
    from sparsekit.calibration.capture import drop_plain_causal_mask

    model = tiny_model("llama")
    causal = torch.ones(4, 4, dtype=torch.bool).tril().expand(2, 1, 4, 4)
    assert drop_plain_causal_mask({"attention_mask": causal}, model)["attention_mask"] is None
    model.config._attn_implementation = "eager"
    assert drop_plain_causal_mask({"attention_mask": causal}, model)["attention_mask"] is causal


@pytest.mark.parametrize("arch", ["llama", "opt", "phi3"])
def test_dense_pass_statistics_equal_a_full_forward(arch):
    """Without pruning, every linear's statistics equal those of its inputs in one full forward
    (also checks that linears sharing an input share statistics, and no others)."""
    model = tiny_model(arch)
    ids = calib_ids(6, 16)
    targets = prunable_linears(model)
    inputs = {n: [] for n in targets}
    hooks = [lin.register_forward_hook(lambda m, a, o, n=n: inputs[n].append(a[0].detach().clone()))
             for n, lin in targets.items()]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    collected = {}

    def keep(index, linears, stats):
        collected.update(stats)
        return False

    run_sequential(model, ids, targets, keep, batch_size=4, modifies=False)
    assert set(collected) == set(targets)
    for name, stats in collected.items():
        # OPT flattens [batch, tokens, d] to [batch * tokens, d] before fc1/fc2
        x = torch.cat(inputs[name]).double().reshape(-1, targets[name].in_features)
        assert stats.nsamples == 6 and stats.ntokens == 6 * 16, name
        assert torch.allclose(stats.sq_norm.double(), x.pow(2).sum(dim=0) / 6, rtol=1e-4, atol=1e-6), name
        assert torch.allclose(stats.mean.double(), x.mean(dim=0), atol=1e-5), name


def test_engine_without_modification_runs_each_layer_once_and_guards_changes():
    model = tiny_model("llama")
    ids = calib_ids(4, 16)
    targets = prunable_linears(model)
    reference = layer_outputs(model, lambda: model(input_ids=ids, use_cache=False))
    seen = layer_outputs(model, lambda: run_sequential(model, ids, targets, lambda *a: False,
                                                       batch_size=2, modifies=False))
    for i, ref in reference.items():
        calls = seen[i][-2:]  # one pass of two batches, outputs written in place
        assert len(seen[i]) == 2 + (1 if i < len(reference) - 1 else 0)  # + argument capture
        assert torch.allclose(torch.cat(calls), ref[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="modifies=False"):
        run_sequential(model, ids, targets, lambda *a: True, batch_size=2, modifies=False)


def test_activation_placement_with_offloaded_weights(monkeypatch):
    from sparsekit.calibration.engine import activation_bytes, keep_activations_on_device

    model = tiny_model("llama")
    assert activation_bytes(model, calib_ids(4, 16)) == 4 * 16 * 64 * 4  # fp32, hidden 64
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * gib, 80 * gib))
    cuda = torch.device("cuda")
    assert keep_activations_on_device(2 * gib, cuda)          # Llama-3-8B, 128 x 2048, bf16
    assert not keep_activations_on_device(36 * gib, cuda)     # more than half the free memory
    assert not keep_activations_on_device(1, torch.device("cpu"))
