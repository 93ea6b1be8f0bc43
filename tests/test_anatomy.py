"""Architecture-generic layer discovery on tiny random models: decoder layers, their linears, the
--targets / --ignore filters."""

import pytest
from torch import nn

from conftest import ARCHS, tiny_model
from sparsekit.anatomy import decoder_layers, layer_linears, linear_kind, prunable_linears

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
