"""sparsekit calibrate on the command line, and prune reusing its statistics (--stats): the same
pruning as calibrating in the run, statistics of another model or of missing layers refused."""

import json

import pytest
import torch

from conftest import data_file


def prune_args(model_dir, out, *extra):
    return ["prune", model_dir, "-o", out, "--data", data_file("valid"), "--nsamples", 4, "--seqlen", 32,
            *extra]


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


def test_layerwise_from_saved_statistics_matches_the_dense_pass(tiny_model_dir, cli, tmp_path):
    """OWL's first pass is a dense pass: saved dense statistics give the same allocation."""
    model_dir = tiny_model_dir("llama")
    stats = tmp_path / "s.safetensors"
    calib = ["--data", data_file("valid"), "--nsamples", 4, "--seqlen", 32, "--sampling", "first"]
    assert cli("calibrate", model_dir, "-o", stats, *calib)[0] == 0
    code, a, _ = cli("prune", model_dir, "-o", tmp_path / "a", "--layerwise", "owl", "--sparsity", "0.7", *calib, "--json")
    code2, b, _ = cli("prune", model_dir, "-o", tmp_path / "b", "--layerwise", "owl", "--sparsity", "0.7",
                      "--stats", stats, "--json")
    assert code == code2 == 0
    a, b = json.loads(a), json.loads(b)
    assert a["layer_sparsity"] == pytest.approx(b["layer_sparsity"], abs=1e-6)
    assert a["layer_values"] == pytest.approx(b["layer_values"], rel=1e-5)
