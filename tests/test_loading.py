"""Model loading on tiny random models: local directories, dtypes, one-line errors for bad model specs,
the hub offline, unsupported architectures and GGUF conversion (layer discovery: test_anatomy.py)."""

import pytest
import torch

from conftest import tiny_model
from sparsekit.errors import UsageError
from sparsekit.loading import load_model, locate

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
