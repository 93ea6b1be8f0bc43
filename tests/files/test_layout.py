"""Checks of a model directory's safetensors files before any work: shards, trailing bytes, headers,
the index (a truncated file as the commands report it: tests/exporting/test_export.py)."""

from __future__ import annotations

import json
import struct

import pytest
from conftest import make_pruned

from sparsekit.errors import UsageError
from sparsekit.files.layout import check_safetensors


def test_check_safetensors_details(tmp_path, tiny_tokenizer):
    src, _, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer, shard="60KB")
    shards = sorted(src.glob("model-*.safetensors"))
    assert check_safetensors(src) == shards
    single = shards[0]
    with open(single, "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(UsageError, match="2 unexpected bytes after the last tensor"):
        check_safetensors(single)
    single.write_bytes(b"\1\0")
    with pytest.raises(UsageError, match="not even a header"):
        check_safetensors(src)
    single.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(UsageError, match="header claims 1000000 bytes"):
        check_safetensors(src)
    single.unlink()
    with pytest.raises(UsageError, match=f"{single}: missing, but model.safetensors.index.json"):
        check_safetensors(src)
    # an index that places a tensor in a file that does not hold it
    src2, _, _ = make_pruned(tmp_path / "p2", tiny_tokenizer, shard="60KB")
    index = json.loads((src2 / "model.safetensors.index.json").read_text())
    first = sorted(index["weight_map"])[0]
    other = sorted(set(index["weight_map"].values()) - {index["weight_map"][first]})[0]
    index["weight_map"][first] = other
    (src2 / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match=f"lacks tensor {first}"):
        check_safetensors(src2)
    assert check_safetensors(tmp_path / "nothing-here.gguf") == []
