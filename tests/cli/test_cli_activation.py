"""Activation sparsity end to end: prune --activation, eval with the sparsity active, export, load."""

import json

import pytest
import torch

from conftest import data_file
from sparsekit.files.thresholds import ACTIVATION_FILE


def calib(nsamples=4, seqlen=32):
    return ["--data", data_file("valid"), "--nsamples", nsamples, "--seqlen", seqlen, "--sampling", "first"]


@pytest.mark.parametrize("method", ["teal", "wina", "chess"])
def test_prune_then_eval_measures_the_target_on_the_calibration_text(method, tiny_model_dir, cli, tmp_path):
    out = tmp_path / "act"
    code, stdout, stderr = cli("prune", tiny_model_dir("llama"), "-o", out, "--method", "none", "--activation", method,
                               "--act-sparsity", "0.4", *calib(), "--json")
    assert code == 0, stderr
    meta = json.loads(stdout)
    section = meta["activation"]
    assert section["method"] == method and section["target"] == 0.4 and section["file"] == ACTIVATION_FILE
    assert (out / ACTIVATION_FILE).is_file()
    assert json.loads((out / "sparsekit.json").read_text())["activation"] == section
    # the first 4 windows of 32 tokens of the same text, scored with the sparsity active
    code, stdout, _ = cli("eval", out, "--data", data_file("valid"), "--seqlen", 32, "--max-windows", 4, "--json")
    assert code == 0
    got = json.loads(stdout)
    assert got["activation_method"] == method
    report = got["activation_sparsity"]
    assert report and all(abs(row["zeroed"] - 0.4) <= 0.02 for row in report.values()), report
    kinds = set(report)
    if method == "chess":
        assert kinds == {"self_attn.q_proj", "self_attn.o_proj", "mlp.act_fn"}
    else:
        assert kinds == {f"self_attn.{p}_proj" for p in "qkvo"} | {f"mlp.{p}_proj" for p in ("gate", "up", "down")}
    # dense evaluation of the same directory, and decode-only mode (every eval window is prefill)
    code, stdout, _ = cli("eval", out, "--data", data_file("valid"), "--seqlen", 32, "--max-windows", 4, "--json",
                          "--act-mode", "off")
    dense = json.loads(stdout)
    assert code == 0 and dense["activation_sparsity"] is None and dense["ppl"] != got["ppl"]
    code, stdout, _ = cli("eval", out, "--data", data_file("valid"), "--seqlen", 32, "--max-windows", 4, "--json",
                          "--act-mode", "decode")
    decode = json.loads(stdout)
    assert code == 0 and decode["ppl"] == dense["ppl"]


def test_weights_and_activations_in_one_run_export_and_load(tiny_model_dir, cli, tmp_path):
    import sparsekit
    from safetensors.torch import load_file

    from sparsekit.runtime.act_sparse import ActSparse
    from sparsekit.runtime.sparse24_linear import Sparse24Linear

    pruned, packed = tmp_path / "pruned", tmp_path / "packed"
    code, stdout, stderr = cli("prune", tiny_model_dir("llama"), "-o", pruned, "--method", "wanda", "--pattern", "2:4",
                               "--activation", "wina", *calib(), "--json")
    assert code == 0, stderr
    meta = json.loads(stdout)
    assert meta["achieved_sparsity"] == 0.5 and meta["recipe"]["activation"] == "wina"
    code, _, stderr = cli("export", pruned, "-o", packed, "--format", "sparse24")
    assert code == 0, stderr
    saved = load_file(pruned / ACTIVATION_FILE)
    assert (packed / ACTIVATION_FILE).read_bytes() == (pruned / ACTIVATION_FILE).read_bytes()
    model, _ = sparsekit.load(packed)
    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, ActSparse)}
    assert len(wrappers) == 14 and all(isinstance(m.inner, Sparse24Linear) for m in wrappers.values())
    for name, m in wrappers.items():  # bit for bit
        assert torch.equal(m.threshold.cpu(), saved[f"{name}.threshold"])
        assert torch.equal(m.scale.cpu(), saved[f"{name}.scale"])
    # WINA's scale is each linear's own column norm, of its pruned weight
    q = model.model.layers[0].self_attn.q_proj
    assert torch.allclose(q.scale, q.inner.to_dense_weight().float().norm(dim=0), rtol=1e-5)
    ids = torch.randint(3, 500, (1, 12))
    dense_model, _ = sparsekit.load(packed, activation="off")
    assert not any(isinstance(m, ActSparse) for m in dense_model.modules())
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, dense_model(ids).logits)
    # inference keeps no counters (no extra reduction per call); measuring turns them on, same output
    assert not any(m.count for m in wrappers.values())
    assert all(m.zeroed_fraction is None for m in wrappers.values())
    from sparsekit.runtime.act_sparse import count_activation

    counted, _ = sparsekit.load(packed)
    count_activation(counted)
    with torch.no_grad():
        assert torch.equal(counted(ids).logits, model(ids).logits)
    fractions = [m.zeroed_fraction for m in counted.modules() if isinstance(m, ActSparse)]
    assert len(fractions) == 14 and all(f is not None and 0 < f < 1 for f in fractions)


def test_plain_transformers_loads_the_dense_model(tiny_model_dir, cli, tmp_path):
    from transformers import AutoModelForCausalLM

    import sparsekit

    out = tmp_path / "act"
    assert cli("prune", tiny_model_dir("llama"), "-o", out, "--method", "magnitude", "--activation", "teal",
               *calib())[0] == 0
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    dense, _ = sparsekit.load(out, activation="off")
    ids = torch.randint(3, 500, (1, 12))
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, dense(ids).logits)


def test_thresholds_from_saved_sketches(tiny_model_dir, cli, tmp_path):
    model = tiny_model_dir("gemma3")
    stats, plain = tmp_path / "with.safetensors", tmp_path / "without.safetensors"
    assert cli("calibrate", model, "-o", stats, "--activations", *calib())[0] == 0
    assert cli("calibrate", model, "-o", plain, *calib())[0] == 0
    code, stdout, stderr = cli("prune", model, "-o", tmp_path / "out", "--method", "none", "--activation", "teal",
                               "--stats", stats, "--json")
    assert code == 0, stderr
    section = json.loads(stdout)["activation"]
    assert section["calibration"]["stats"] == str(stats)
    assert all(abs(s["calibrated"] - 0.5) < 0.02 for s in section["sites"].values())
    code, _, stderr = cli("prune", model, "-o", tmp_path / "out2", "--method", "none", "--activation", "teal",
                          "--stats", plain)
    assert code == 2 and "calibrate --activations" in stderr
    code, _, stderr = cli("prune", model, "-o", tmp_path / "out3", "--activation", "teal", "--act-allocation", "greedy",
                          "--stats", stats)
    assert code == 2 and "--act-allocation greedy" in stderr


@pytest.mark.parametrize("args, message", [
    (["--act-sparsity", "0.5"], "--act-sparsity applies to activation sparsity"),
    (["--activation", "teal", "--act-sparsity", "1.5"], "--act-sparsity 1.5 is outside [0, 1)"),
    (["--activation", "sparse"], "unknown --activation 'sparse'"),
    (["--activation", "teal", "--act-mode", "prefill"], "unknown --act-mode 'prefill'"),
    (["--method", "none"], "leaves the model as it is"),
])
def test_bad_activation_options(args, message, tiny_model_dir, cli, tmp_path):
    code, _, stderr = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "out", *args)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1


def test_greedy_allocation_keeps_the_mean(tiny_model_dir, cli, tmp_path):
    code, stdout, stderr = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "g", "--method", "none",
                               "--activation", "teal", "--act-sparsity", "0.5", "--act-allocation", "greedy",
                               *calib(2, 16), "--json")
    assert code == 0, stderr
    sites = json.loads(stdout)["activation"]["sites"]
    targets = [s["sparsity"] for s in sites.values()]
    assert len(set(targets)) > 1 and all(0 <= t <= 1 for t in targets)
