"""The sequential engine, the prune/calibrate commands and their outputs, on tiny random models."""

import json

import pytest
import torch

from conftest import ARCHS, data_file, tiny_model
from sparsekit.calibrate.engine import run_sequential
from sparsekit.anatomy import decoder_layers, prunable_linears
from sparsekit.prune.masks import wanda_mask
from sparsekit.recipe import Calibration, make_recipe
from sparsekit.prune.pipeline import prune_model


def recipe(method, sparsity=None, pattern="unstructured", batch=8, **kw):
    return make_recipe(method=method, sparsity=sparsity, pattern=pattern, calibration=Calibration(batch_size=batch), **kw)


def calib_ids(n=5, seqlen=16, seed=0):
    return torch.randint(3, 512, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def layer_outputs(model, run):
    """Outputs of every decoder layer while `run()` executes, per call."""
    _, layers = decoder_layers(model)
    seen = {i: [] for i in range(len(layers))}
    hooks = [layer.register_forward_hook(
        lambda m, a, out, i=i: seen[i].append((out[0] if isinstance(out, tuple) else out).detach().clone()))
        for i, layer in enumerate(layers)]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


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


def prune_args(model_dir, out, *extra):
    return ["prune", model_dir, "-o", out, "--data", data_file("valid"), "--nsamples", 4, "--seqlen", 32,
            *extra]


def test_cli_prune_writes_model_and_recipe(tiny_model_dir, cli, tmp_path):
    out = tmp_path / "pruned"
    code, stdout, _ = cli(*prune_args(tiny_model_dir("llama"), out, "--method", "wanda", "--pattern", "2:4", "--json"))
    assert code == 0
    summary = json.loads(stdout)
    meta = json.loads((out / "sparsekit.json").read_text())
    assert summary["recipe"] == meta["recipe"]
    recipe = meta["recipe"]
    cal = recipe["calibration"]
    assert (recipe["method"], recipe["pattern"], recipe["sparsity"], cal["nsamples"], cal["seqlen"],
            cal["seed"], cal["sampling"], cal["bos"]) == ("wanda", "2:4", 0.5, 4, 32, 0, "random", "never")
    assert set(recipe["versions"]) >= {"sparsekit", "torch", "transformers"}
    assert len(meta["layers"]) == 14 and all(v["achieved"] == 0.5 for v in meta["layers"].values())
    assert meta["achieved_sparsity"] == 0.5
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    # eval and info see the sparsity of the saved model
    code, stdout, _ = cli("eval", out, "--data", data_file("test"), "--seqlen", 32, "--max-windows", 2, "--json")
    assert code == 0 and json.loads(stdout)["weight_sparsity"] == 0.5
    code, stdout, _ = cli("info", out, "--json")
    assert code == 0 and json.loads(stdout)["linear_sparsity"] == 0.5
    # the table form
    code, stdout, _ = cli(*prune_args(tiny_model_dir("llama"), tmp_path / "t", "--method", "magnitude"))
    assert code == 0 and "Pruned layers" in stdout and "achieved" in stdout


def test_cli_calibrate_then_prune_with_stats(tiny_model_dir, cli, tmp_path):
    model_dir = tiny_model_dir("gemma3")
    stats = tmp_path / "stats.safetensors"
    code, _, _ = cli("calibrate", model_dir, "-o", stats, "--data", data_file("valid"), "--nsamples", 4,
                     "--seqlen", 32, "--hessian", "--sampling", "first")
    assert code == 0 and stats.exists()
    code, _, _ = cli("prune", model_dir, "-o", tmp_path / "a", "--stats", stats, "--method", "sparsegpt")
    assert code == 0
    code, _, _ = cli(*prune_args(model_dir, tmp_path / "b", "--sampling", "first"))
    code2, _, _ = cli("prune", model_dir, "-o", tmp_path / "c", "--stats", stats)
    assert code == code2 == 0
    from safetensors.torch import load_file

    seq, reuse = load_file(tmp_path / "b" / "model.safetensors"), load_file(tmp_path / "c" / "model.safetensors")
    # layer 0 sees identical (dense) inputs either way; later layers differ (pruned vs dense inputs)
    assert torch.equal(seq["model.layers.0.mlp.up_proj.weight"], reuse["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(seq["model.layers.2.mlp.down_proj.weight"], reuse["model.layers.2.mlp.down_proj.weight"])
    meta = json.loads((tmp_path / "c" / "sparsekit.json").read_text())
    assert meta["recipe"]["calibration"]["stats"] == str(stats)
    assert meta["recipe"]["calibration"]["sampling"] == "first"


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.0"], "outside [0, 1)"),
    (["--sparsity", "-0.1"], "outside [0, 1)"),
    (["--pattern", "2:4", "--sparsity", "0.6"], "2:4 prunes exactly 2/4 = 0.5 of the weights but --sparsity is 0.6"),
    (["--pattern", "3:5", "--sparsity", "0.6"], "3:5 does not divide layer model.layers.0.self_attn.q_proj: its input dimension 64"),
    (["--pattern", "2of4"], "invalid sparsity pattern"),
    (["--method", "obc"], "unknown --method 'obc'"),
    (["--targets", "nothing-matches"], "no linear layers match"),
    (["--data", "missing.txt"], "no such file"),
])
def test_cli_prune_bad_input(args, message, tiny_model_dir, cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = cli("prune", tiny_model_dir("llama"), "-o", out, "--nsamples", 2, "--seqlen", 16,
                               "--data", data_file("valid"), *args)
    assert code == 2, stderr
    assert message in stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def test_stats_from_another_model_or_missing_layers_are_refused(tiny_model_dir, cli, tmp_path):
    stats = tmp_path / "llama.safetensors"
    code, _, _ = cli("calibrate", tiny_model_dir("llama"), "-o", stats, "--data", data_file("valid"),
                     "--nsamples", 2, "--seqlen", 16, "--targets", r"mlp\.")
    assert code == 0
    code, _, stderr = cli("prune", tiny_model_dir("gemma3"), "-o", tmp_path / "x", "--stats", stats)
    assert code == 2 and "computed on another model" in stderr
    code, _, stderr = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "x", "--stats", stats)
    assert code == 2 and "has no statistics for 8 layer(s)" in stderr
    code, _, stderr = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "x", "--stats", stats,
                          "--targets", r"mlp\.", "--method", "sparsegpt")
    assert code == 2 and "calibrate --hessian" in stderr
    code, _, stderr = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "x", "--stats", tmp_path / "none.safetensors")
    assert code == 2 and "no such file" in stderr


def test_interrupted_prune_leaves_no_output(tiny_model_dir, cli, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    def boom(self, path, *a, **k):
        (path / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", boom)
    out = tmp_path / "out"
    code, _, _ = cli(*prune_args(tiny_model_dir("llama"), out, "--method", "magnitude"))
    assert code == 130
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tiny_model_dir, cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, stderr = cli(*prune_args(tiny_model_dir("llama"), out, "--method", "magnitude"))
    assert code == 2 and "--overwrite" in stderr and (out / "keep.txt").exists()
    # --overwrite never empties a directory that sparsekit did not write
    code, _, stderr = cli(*prune_args(tiny_model_dir("llama"), out, "--method", "magnitude", "--overwrite"))
    assert code == 2 and (out / "keep.txt").exists() and len(stderr.strip().splitlines()) == 1
    (out / "keep.txt").unlink()
    code, _, _ = cli(*prune_args(tiny_model_dir("llama"), out, "--method", "magnitude"))
    assert code == 0 and (out / "sparsekit.json").exists()
    first = (out / "sparsekit.json").read_text()
    code, _, _ = cli(*prune_args(tiny_model_dir("llama"), out, "--method", "magnitude", "--sparsity", "0.3",
                                 "--overwrite"))
    assert code == 0 and (out / "sparsekit.json").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("seqlen", [8, 16])
def test_sliding_mask_covering_the_window_is_dropped_with_the_same_result(seqlen):
    """Gemma-3 tiny has an 8-token window: at seqlen 8 its sliding mask is plainly causal and is
    replaced by SDPA's causal path; at 16 it is kept. Either way the engine reproduces the model."""
    from sparsekit.calibrate.capture import capture_layer_calls

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
    from sparsekit.calibrate.capture import drop_plain_causal_mask

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
    from sparsekit.calibrate.engine import activation_bytes, keep_activations_on_device

    model = tiny_model("llama")
    assert activation_bytes(model, calib_ids(4, 16)) == 4 * 16 * 64 * 4  # fp32, hidden 64
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * gib, 80 * gib))
    cuda = torch.device("cuda")
    assert keep_activations_on_device(2 * gib, cuda)          # Llama-3-8B, 128 x 2048, bf16
    assert not keep_activations_on_device(36 * gib, cuda)     # more than half the free memory
    assert not keep_activations_on_device(1, torch.device("cpu"))


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
