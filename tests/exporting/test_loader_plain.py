"""Exports loaded with plain transformers (no sparsekit): dense loads exactly, compressed
formats are refused loudly, never loaded with random weights; sparsekit side files travel
with the model and are invisible to transformers."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
from transformers.utils import is_compressed_tensors_available

from sparsekit.exporting.writer import export_model
from sparsekit.loading import load
from sparsekit.files.layout import check_safetensors, weight_files
from sparsekit.exporting.writer import LOAD_HINT
from sparsekit.kernels.sparse24 import mask_24_magnitude
from sparsekit.anatomy import prunable_linears
from sparsekit.files.modeldir import write_model_dir

IDS = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(1))
SIDE = "sparsekit-extra.safetensors"  # any sparsekit side file (activation thresholds are one kind)


@torch.no_grad()
def logits(model):
    return model(IDS).logits


def pruned_dir(path: Path, tokenizer, side: bool = False):
    """A 2:4-pruned tiny llama written by write_model_dir (as `sparsekit prune` does)."""
    model = tiny_model("llama")
    targets = prunable_linears(model)
    with torch.no_grad():
        for lin in targets.values():
            lin.weight.mul_(mask_24_magnitude(lin.weight))
    meta = {"recipe": {"method": "magnitude", "pattern": "2:4"},
            "layers": {n: {"target": 0.5} for n in targets}}
    thresholds = {"model.layers.0.mlp.down_proj/threshold": torch.tensor([0.25, 0.5])}
    metadata = {"sparsekit": json.dumps({"format": "sparsekit-extra"})}
    sides = {SIDE: (thresholds, metadata)} if side else None
    write_model_dir(model, tokenizer, path, meta, side_files=sides)
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("plain")
    model = pruned_dir(root / "pruned", tiny_tokenizer, side=True)
    for fmt in ("sparse24", "bitmask", "dense"):
        export_model(root / "pruned", root / fmt, fmt)
    return root, model


def test_dense_export_loads_exactly_with_plain_transformers(exports):
    root, model = exports
    plain = AutoModelForCausalLM.from_pretrained(root / "dense")
    assert torch.equal(logits(plain), logits(model))


@pytest.mark.parametrize("fmt", ["sparse24", "bitmask"])
def test_compressed_exports_are_refused_by_plain_transformers(exports, fmt):
    root, model = exports
    with pytest.raises((ImportError, ValueError)) as info:
        AutoModelForCausalLM.from_pretrained(root / fmt)
    if is_compressed_tensors_available():  # compressed-tensors >= 0.15 validates the block
        assert "sparsekit.load(path)" in str(info.value)
    else:
        assert isinstance(info.value, ImportError) and "compressed-tensors" in str(info.value)
    loaded, _ = load(root / fmt)  # sparsekit reads it
    assert torch.equal(logits(loaded), logits(model))


def test_load_hint_is_quoted_whole_by_validation():
    """The refusal with compressed-tensors installed is a pydantic validation of config_groups
    (an object expected): the error quotes the string in full only up to 50 characters."""
    from pydantic import TypeAdapter, ValidationError

    assert len(LOAD_HINT) <= 50
    with pytest.raises(ValidationError) as info:
        TypeAdapter(dict[str, dict]).validate_python(LOAD_HINT)
    assert f"input_value='{LOAD_HINT}'" in str(info.value)


def test_compat_export_has_the_plain_block_and_loads_in_sparsekit(exports, tmp_path):
    root, model = exports
    summary = export_model(root / "pruned", tmp_path / "compat", "sparse24",
                           compressed_tensors_compat=True)
    assert summary["compressed_tensors_compat"] is True
    block = json.loads((tmp_path / "compat" / "config.json").read_text())["quantization_config"]
    assert "config_groups" not in block and block["quant_method"] == "compressed-tensors"
    assert block["sparsity_config"]["format"] == "sparse-24-bitmask"
    loaded, _ = load(tmp_path / "compat")
    assert torch.equal(logits(loaded), logits(model))


def test_side_files_are_copied_byte_for_byte_and_ignored_as_weights(exports):
    root, model = exports
    pruned = root / "pruned"
    assert (pruned / SIDE).is_file()
    assert weight_files(pruned) == [pruned / "model.safetensors"]
    assert check_safetensors(pruned) == [pruned / "model.safetensors", pruned / SIDE]
    for fmt in ("sparse24", "bitmask", "dense"):
        assert filecmp.cmp(pruned / SIDE, root / fmt / SIDE, shallow=False)
        assert weight_files(root / fmt) == [root / fmt / "model.safetensors"]
    # plain transformers ignores the side file (the pruned directory and the dense export)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(pruned)), logits(model))
    summary = json.loads((root / "dense" / "sparsekit.json").read_text())["export"]
    assert summary["side_files"] == [SIDE]


def test_side_file_survives_a_sharded_export_and_a_damaged_one_is_named(tmp_path, tiny_tokenizer):
    pruned_dir(tmp_path / "pruned", tiny_tokenizer)
    side = tmp_path / "pruned" / "sparsekit-extra.safetensors"
    save_file({"x": torch.arange(6.0)}, str(side))
    export_model(tmp_path / "pruned", tmp_path / "out", "sparse24", max_shard_bytes=20_000)
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert side.name not in index["weight_map"].values()
    assert filecmp.cmp(side, out / side.name, shallow=False)
    load(out)
    side.write_bytes(side.read_bytes()[:-4])
    from sparsekit.errors import UsageError

    with pytest.raises(UsageError, match=f"{side}: damaged safetensors file"):
        export_model(tmp_path / "pruned", tmp_path / "again", "dense")
