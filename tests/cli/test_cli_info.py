"""sparsekit info on the command line, and a bad model on the command line: exit code 2, one line."""

import json

import pytest
import torch

from conftest import tiny_model


def test_cli_info_reports_shapes_and_sparsity(tiny_model_dir, cli, tmp_path):
    src = tiny_model_dir("llama")
    model = tiny_model("llama")
    with torch.no_grad():  # zero exactly half of every q_proj
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight[:, ::2] = 0
    model.save_pretrained(tmp_path)
    for f in src.glob("tokenizer*"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    code, stdout, _ = cli("info", tmp_path, "--json")
    assert code == 0
    info = json.loads(stdout)
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["layers"] == 2
    assert info["linears"]["self_attn.q_proj"]["shape_out_in"] == [64, 64]
    assert info["linears"]["mlp.down_proj"]["shape_out_in"] == [64, 128]
    assert info["linears"]["self_attn.q_proj"]["sparsity"] == pytest.approx(0.5)
    assert info["linears"]["mlp.up_proj"]["sparsity"] == 0.0
    total = sum(p.numel() for p in model.parameters())
    assert info["parameters"] == total
    code, stdout, _ = cli("info", tmp_path)
    assert code == 0 and "self_attn.q_proj" in stdout and "50.00%" in stdout


def test_cli_bad_model_exit_code_2(cli, tmp_path):
    code, stdout, stderr = cli("eval", tmp_path / "nope")
    assert code == 2
    assert "no such file or directory" in stderr
    assert "Traceback" not in stderr + stdout
    assert len(stderr.strip().splitlines()) == 1
