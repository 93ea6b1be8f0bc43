"""Export formats are plug-ins: a codec written here and registered with one line exports,
loads back through ``sparsekit.load`` and is described, with no change to the writer or loader."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import all_headers, make_pruned
from test_export import logits
from torch import nn
from torch.nn import functional as F

from sparsekit.errors import UsageError
from sparsekit.exporting.codec_base import Codec, LayerFacts, Unencodable
from sparsekit.exporting.codecs import FORMATS
from sparsekit.exporting.loader import describe, is_export
from sparsekit.exporting.writer import LOAD_HINT, export_model
from sparsekit.loading import load
from sparsekit.workflows.export import export


class TransposedLinear(nn.Module):
    """Runs a linear layer from its transposed weight (the toy format's runtime module)."""

    def __init__(self, weight_t: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight_t = nn.Parameter(weight_t, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x):
        return F.linear(x, self.weight_t.t(), self.bias)


def encode(prefix, weight):
    return {f"{prefix}.weight_t": weight.t().contiguous()}


def build(prefix, parts, linear):
    bias = linear.bias if linear.bias is not None and not linear.bias.is_meta else None
    return TransposedLinear(parts["weight_t"].to(linear.weight.dtype), bias)


def measure(layer):
    w = layer.tensor("weight_t")
    return LayerFacts(int((w != 0).sum()), w.numel(), w.dtype)


TRANSPOSED = Codec("transposed", "each pruned weight stored transposed (a test format)",
                   ct_format="sparsekit-transposed", parts=("weight_t",), encode=encode,
                   build=build, measure=measure)


@pytest.fixture
def transposed():
    FORMATS.register(TRANSPOSED)  # the one registration line
    try:
        yield TRANSPOSED
    finally:
        FORMATS.unregister(TRANSPOSED.name)


@pytest.mark.parametrize("arch, pattern", [("llama", "2:4"), ("opt", "unstructured")])
def test_a_registered_codec_exports_and_loads_back(transposed, arch, pattern, tmp_path,
                                                   tiny_tokenizer):
    src, model, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer, arch, pattern=pattern)
    out = tmp_path / "out"
    summary = export_model(src, out, "transposed")
    assert summary["format"] == "transposed"
    assert summary["layers"] == summary["compressed_layers"] == len(targets)
    assert summary["linear_bytes"] == summary["linear_dense_bytes"]

    headers = all_headers(out)
    for name in targets:
        n, k = model.get_submodule(name).weight.shape
        assert headers[f"{name}.weight_t"]["shape"] == [k, n]
        assert f"{name}.weight" not in headers
    block = json.loads((out / "config.json").read_text())["quantization_config"]
    assert block["config_groups"] == LOAD_HINT
    assert block["sparsity_config"]["format"] == "sparsekit-transposed"
    assert block["sparsity_config"]["sparsity_structure"] == ("2:4" if pattern == "2:4"
                                                              else "unstructured")
    meta = json.loads((out / "sparsekit.json").read_text())["export"]
    assert meta["format"] == "transposed"
    assert meta["compressed_tensors_format"] == "sparsekit-transposed"

    assert is_export(out) == "transposed"
    loaded = load(out)
    for name in targets:
        module = loaded.model.get_submodule(name)
        assert isinstance(module, TransposedLinear)
        assert torch.equal(module.weight_t.t(), model.get_submodule(name).weight)
    ref = logits(model)
    torch.testing.assert_close(logits(loaded.model), ref, rtol=1e-5, atol=1e-5 * ref.abs().max())
    assert loaded.tokenizer.encode("hello") == tiny_tokenizer.encode("hello")

    info = describe(out)
    zeros = sum(int((model.get_submodule(n).weight == 0).sum()) for n in targets)
    numel = sum(model.get_submodule(n).weight.numel() for n in targets)
    assert info["format"] == "transposed" and info["compressed_layers"] == len(targets)
    assert info["sparsity"] == zeros / numel and info["linear_ratio"] == 1.0
    assert info["linear_bytes"] == summary["linear_bytes"] and info["dtype"] == "float32"
    assert "transposed (each pruned weight stored transposed (a test format))" in \
        FORMATS.help_text()


def test_an_unregistered_codec_is_gone(transposed, tmp_path, tiny_tokenizer):
    src, _, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer)
    export_model(src, tmp_path / "out", "transposed")
    FORMATS.unregister("transposed")
    try:
        assert "transposed" not in FORMATS and is_export(tmp_path / "out") is None
        with pytest.raises(UsageError, match="unknown --format 'transposed': use one of "
                                             "sparse24, bitmask, dense$"):
            export(src, tmp_path / "again", format="transposed")
    finally:
        FORMATS.register(TRANSPOSED)  # for the fixture to take away again


def test_a_codec_refusal_lists_the_layers(tmp_path, tiny_tokenizer):
    def only_narrow(prefix, weight):
        if weight.shape[0] > 64:
            raise Unencodable(f"{weight.shape[0]} rows")
        return encode(prefix, weight)

    picky = dataclasses.replace(TRANSPOSED, name="picky", encode=only_narrow)
    FORMATS.register(picky)
    try:
        src, _, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer)  # 2 layers: gate, up 128 rows
        with pytest.raises(UsageError) as info:
            export_model(src, tmp_path / "out", "picky")
    finally:
        FORMATS.unregister("picky")
    assert str(info.value) == ("4 targeted layer(s) cannot be exported as picky: "
                               "model.layers.0.mlp.gate_proj (128 rows), "
                               "model.layers.0.mlp.up_proj (128 rows), "
                               "model.layers.1.mlp.gate_proj (128 rows) and 1 more")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


def test_the_workflow_takes_a_registered_codec(transposed, tmp_path, tiny_tokenizer):
    src, model, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer)
    seen = []
    summary = export(src, tmp_path / "out", format="transposed", compressed_tensors_compat=True,
                     progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert summary["compressed_tensors_compat"] is True
    assert seen[0] == ("exporting transposed", None, None)
    assert seen[-1][1] == seen[-1][2] == len(seen) - 1
    torch.testing.assert_close(logits(load(tmp_path / "out").model), logits(model))


def test_codec_records_are_checked():
    with pytest.raises(TypeError, match="needs parts, encode and measure"):
        Codec("half", "a record without functions")
    with pytest.raises(TypeError, match="compressed, so it needs build"):
        dataclasses.replace(TRANSPOSED, name="nobuild", build=None)
    with pytest.raises(TypeError, match="marks and unread must be parts"):
        dataclasses.replace(TRANSPOSED, name="badmarks", marks=("weight",))
    with pytest.raises(ValueError, match="already registered"):
        FORMATS.register(dataclasses.replace(TRANSPOSED, name="dense"))


def test_an_encoder_writing_other_names_is_caught(tmp_path, tiny_tokenizer):
    sloppy = dataclasses.replace(TRANSPOSED, name="sloppy",
                                 encode=lambda prefix, weight: {f"{prefix}.w": weight})
    FORMATS.register(sloppy)
    try:
        src, _, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer)
        with pytest.raises(ValueError, match=r"encoded model\.layers\.0\.\S+ as \["):
            export_model(src, tmp_path / "out", "sloppy")
    finally:
        FORMATS.unregister("sloppy")
    assert not (tmp_path / "out").exists()
