"""Model loading and architecture-generic layer discovery on tiny random models."""

import json

import pytest
import torch
from torch import nn

from conftest import ARCHS, tiny_model
from sparsekit.errors import UsageError
from sparsekit.anatomy import decoder_layers, layer_linears, linear_kind, prunable_linears
from sparsekit.loading import load_model, locate

EXPECTED_LINEARS = {
    "llama": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    "opt": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"},
    "phi3": {"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"},
}
for arch in ("mistral", "qwen2", "qwen3", "gemma3"):
    EXPECTED_LINEARS[arch] = EXPECTED_LINEARS["llama"]


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_layers_and_linears(arch):
    model = tiny_model(arch)
    path, layers = decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    assert set(layer_linears(layers[0])) == EXPECTED_LINEARS[arch]
    linears = prunable_linears(model)
    assert len(linears) == len(layers) * len(EXPECTED_LINEARS[arch])
    # lm_head and embeddings are never targets; every target is an nn.Linear inside a layer
    assert not any("lm_head" in n or "embed" in n for n in linears)
    assert all(n.startswith(path + ".") and isinstance(m, nn.Linear) for n, m in linears.items())
    assert {linear_kind(n) for n in linears} == EXPECTED_LINEARS[arch]


def test_targets_and_ignore_filter_by_regex():
    model = tiny_model("llama")
    only_mlp = prunable_linears(model, targets=r"mlp\.")
    assert set(map(linear_kind, only_mlp)) == {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    no_down = prunable_linears(model, ignore=r"down_proj|layers\.0\.")
    assert all("down_proj" not in n and ".0." not in n for n in no_down)
    assert len(no_down) == 6  # layer 1: q, k, v, o, gate, up


@pytest.mark.parametrize("arch", ["llama", "gemma3", "opt"])
def test_load_local_directory(arch, tiny_model_dir):
    loaded = load_model(str(tiny_model_dir(arch)), dtype="float32", device="cpu")
    assert loaded.kind == "dir"
    assert loaded.tokenizer is not None
    reference = tiny_model(arch)
    ids = torch.randint(3, 500, (1, 12))
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, reference(ids).logits, atol=1e-5)


def test_load_dtype_option(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir("llama")), dtype="bfloat16", device="cpu")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_bad_model_specs(tmp_path):
    with pytest.raises(UsageError, match="no such file or directory"):
        locate(str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="no config.json"):
        locate(str(tmp_path))
    with pytest.raises(UsageError, match="unknown --dtype"):
        load_model(str(tmp_path), dtype="float8")
    with pytest.raises(UsageError, match="unknown --device"):
        load_model(str(tmp_path), device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no CUDA GPU is visible: use --device cpu"):
        load_model(str(tmp_path), device="cuda")


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(UsageError, match="cannot download from the Hugging Face hub.*local model directory"):
        load_model("some-org/not-a-model")


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import DistilBertConfig

    DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(tmp_path)
    with pytest.raises(UsageError, match=r"unsupported architecture DistilBertConfig.*causal.*Llama"):
        load_model(str(tmp_path))


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


def test_gguf_conversion_refuses_an_older_transformers(tmp_path, monkeypatch):
    import transformers

    from sparsekit.loading import convert_gguf

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF not really")
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(UsageError, match=r"transformers >= 5\.23 \(found 5\.17\.0.*pip install -U"):
        convert_gguf(str(gguf))
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())
