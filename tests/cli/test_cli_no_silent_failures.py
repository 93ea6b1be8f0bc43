"""Nothing degrades silently: NaN/inf weights, activations or statistics, mixture-of-experts models
and decoder matrices that are not nn.Linear stop the run with one line and exit code 2."""

import json

import pytest
import torch

from conftest import data_file, tiny_model


@pytest.fixture
def save(tiny_tokenizer, capsys):
    def run(model, path):
        model.save_pretrained(path)
        tiny_tokenizer.save_pretrained(path)
        capsys.readouterr()  # drop save_pretrained's progress output
        return path
    return run


def _reads_data(extra) -> bool:
    """Whether the run reads calibration data (magnitude alone reads none, and refuses --data)."""
    return "magnitude" not in extra or any(f in extra for f in ("--refine", "--activation", "--layerwise"))


def _args(model_dir, out, *extra):
    data = ["--data", data_file("valid"), "--nsamples", 2, "--seqlen", 16] if _reads_data(extra) else []
    return ["prune", model_dir, "-o", out, *data, *extra]


def _one_line(code, stderr):
    assert code == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr


@pytest.mark.parametrize("cls, kwargs", [
    ("Qwen3MoeConfig", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16)),
    ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
])
def test_mixture_of_experts_is_refused_before_loading(cls, kwargs, save, cli, tmp_path, monkeypatch):
    import transformers
    from transformers import AutoModelForCausalLM

    config = getattr(transformers, cls)(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                        **kwargs)
    model = AutoModelForCausalLM.from_config(config)
    path = save(model, tmp_path / "moe")
    arch = type(model).__name__

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    for command in (_args(path, tmp_path / "out", "--method", "magnitude"),
                    ["calibrate", path, "-o", tmp_path / "s.safetensors", "--data", data_file("valid")]):
        code, _, stderr = cli(*command)
        _one_line(code, stderr)
        assert f"{arch} is a mixture-of-experts model" in stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.safetensors").exists()


def test_decoder_matrices_that_are_not_linear_are_refused(save, cli, tmp_path):
    """GPT-2's attention and MLP are Conv1D: "every linear" would silently skip them."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=256))
    path = save(model, tmp_path / "gpt2")
    code, _, stderr = cli(*_args(path, tmp_path / "out", "--method", "magnitude"))
    _one_line(code, stderr)
    assert "not nn.Linear (e.g. transformer.h.0.attn.c_attn.weight, a Conv1D)" in stderr


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nan_weights_stop_the_run_naming_the_layer(method, save, cli, tmp_path):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    path = save(model, tmp_path / "nan")
    code, _, stderr = cli(*_args(path, tmp_path / "out", "--method", method))
    _one_line(code, stderr)
    assert "model.layers.1.mlp.up_proj: its weights contain NaN or inf" in stderr
    assert not (tmp_path / "out").exists()


def test_nan_activations_stop_the_run_naming_the_layer(save, cli, tmp_path):
    """An untargeted layer that overflows still poisons every later layer's statistics."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.fill_(float("inf"))
    path = save(model, tmp_path / "inf")
    code, _, stderr = cli(*_args(path, tmp_path / "out", "--ignore", "o_proj"))
    _one_line(code, stderr)
    assert "decoder layer 0 (model.layers.0) produced NaN or inf activations" in stderr


def test_nan_embeddings_stop_the_run(save, cli, tmp_path):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(float("nan"))
    path = save(model, tmp_path / "emb")
    code, _, stderr = cli(*_args(path, tmp_path / "out"))
    _one_line(code, stderr)
    assert "the embeddings produced NaN or inf" in stderr


def test_nan_statistics_in_a_file_stop_the_run(tiny_model_dir, cli, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model_dir = tiny_model_dir("llama")
    stats = tmp_path / "s.safetensors"
    code, _, _ = cli("calibrate", model_dir, "-o", stats, "--data", data_file("valid"), "--nsamples", 2, "--seqlen", 16)
    assert code == 0
    with safe_open(str(stats), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in tensors if k.endswith("mlp.down_proj/sq_norm"))
    tensors[key][0] = float("inf")
    save_file(tensors, str(stats), metadata=meta)
    code, _, stderr = cli("prune", model_dir, "-o", tmp_path / "out", "--stats", stats)
    _one_line(code, stderr)
    assert f"{key.split('/')[0]}: its input statistics contain NaN or inf" in stderr


def test_pattern_and_a_conflicting_sparsity_is_an_error(tiny_model_dir, cli, tmp_path):
    code, _, stderr = cli(*_args(tiny_model_dir("llama"), tmp_path / "out", "--pattern", "1:4", "--sparsity", "0.5"))
    _one_line(code, stderr)
    code, stdout, _ = cli(*_args(tiny_model_dir("llama"), tmp_path / "out", "--pattern", "1:4", "--json"))
    assert code == 0 and json.loads(stdout)["achieved_sparsity"] == 0.25
