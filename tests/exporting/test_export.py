"""Export (sparse24 / bitmask / dense safetensors) and load: codecs, files, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import all_headers, make_pruned, st_header
from safetensors import safe_open
from torch import nn

from sparsekit.errors import UsageError
from sparsekit.exporting.loader import describe, is_export
from sparsekit.exporting.writer import export_model
from sparsekit.loading import load
from sparsekit.exporting import writer as writer_mod
from sparsekit.exporting.formats import (bitmask24_to_packed, compress_24, compress_bitmask,
                                      decompress, pack_bitmask, unpack_bitmask)
from sparsekit.runtime.sparse24_linear import Sparse24Linear
from sparsekit.kernels.sparse24 import mask_24_magnitude, pack_24

IDS = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def logits(model):
    return model(IDS).logits.float()


def nbytes(entry: dict) -> int:
    start, end = entry["data_offsets"]
    return end - start


# --- codecs -------------------------------------------------------------------------------

def test_hand_built_24_example():
    w = torch.tensor([[1.0, 0, 2, 0, 0, 3, 0, -4],
                      [0.0, 0, 0, 5, 6, 7, 0, 0]])
    compressed, bitmask, shape = compress_24(w)
    # row 0 keeps columns 0, 2, 5, 7; row 1 keeps the nonzero column 3 plus the lowest zero
    # column 0 of its first group (explicit zero), then columns 4, 5
    assert compressed.tolist() == [[1, 2, 3, -4], [0, 5, 6, 7]]
    assert bitmask.dtype == torch.uint8 and bitmask.shape == (2, 1)
    assert bitmask.tolist() == [[0b10100101], [0b00111001]]
    assert shape.dtype == torch.int64 and shape.tolist() == [[2], [8]]
    assert torch.equal(decompress(compressed, bitmask, shape), w)
    # direct conversion to the kernel layout equals packing the dense weight
    packed, ref = bitmask24_to_packed(compressed, bitmask, shape), pack_24(w)
    assert torch.equal(packed.values, ref.values) and torch.equal(packed.meta, ref.meta)


def test_hand_built_bitmask_example():
    w = torch.tensor([[1.0, 0, 2, 0, 0, 3, 0, -4, 0, 0, 9, 0],
                      [0.0, 0, 0, 5, 6, 7, 0, 0, 0, 0, 0, 0]])
    compressed, bitmask, shape, row_offsets = compress_bitmask(w)
    assert compressed.tolist() == [1, 2, 3, -4, 9, 5, 6, 7]
    assert bitmask.tolist() == [[0b10100101, 0b00000100], [0b00111000, 0]]
    assert shape.tolist() == [2, 12] and shape.dim() == 1 and shape.dtype == torch.int64
    assert row_offsets.tolist() == [0, 5]
    assert torch.equal(decompress(compressed, bitmask, shape), w)


def test_bitmask_pack_unpack_roundtrip():
    mask = torch.rand(5, 37, generator=torch.Generator().manual_seed(1)) > 0.5
    packed = pack_bitmask(mask)
    assert packed.shape == (5, 5)
    assert torch.equal(unpack_bitmask(packed, 37), mask)
    assert int(packed[:, -1].max()) < 32  # bits past K=37 (5 used in the last byte) are 0


@pytest.mark.parametrize("k", [8, 72, 200])
def test_bitmask_to_packed_matches_pack_24(k):
    g = torch.Generator().manual_seed(k)
    w = torch.randn(6, k, generator=g) * mask_24_magnitude(torch.randn(6, k, generator=g))
    w[0, :8] = 0  # groups with no nonzeros
    w[1, 1:4] = 0  # a group with one nonzero
    w = w.to(torch.bfloat16)
    packed, ref = bitmask24_to_packed(*compress_24(w)), pack_24(w)
    assert torch.equal(packed.values, ref.values) and torch.equal(packed.meta, ref.meta)


def test_negative_zero_is_not_kept():
    w = torch.tensor([[1.0, -0.0, 2.0, 0.0, -0.0, 0.0, 0.0, 5.0]])
    compressed, bitmask, _ = compress_24(w)  # 3 "nonzeros" in group 0 if -0.0 counted
    assert bitmask.tolist() == [[0b10010101]]  # columns 0, 2 | 4 (lowest zero), 7
    assert compressed.tolist() == [[1, 2, 0, 5]]
    assert not torch.signbit(compressed[0, 2])  # the kept zero is +0.0
    c, b, _, offs = compress_bitmask(w)
    assert c.tolist() == [1, 2, 5] and b.tolist() == [[0b10000101]]


def test_compress_24_refuses_non_24():
    with pytest.raises(ValueError, match="not 2:4"):
        compress_24(torch.tensor([[1.0, 2.0, 3.0, 0.0]]))


# --- export + load round trips ------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gemma3", "opt", "qwen3"])
def test_sparse24_roundtrip_fp32(arch, tmp_path, tiny_tokenizer):
    src, model, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer, arch)
    summary = export_model(src, tmp_path / "out", "sparse24")
    assert summary["compressed_layers"] == len(targets)
    result = load(tmp_path / "out")
    (loaded, tok), loaded_meta = result, result.meta
    swapped = [n for n, m in loaded.named_modules() if isinstance(m, Sparse24Linear)]
    assert sorted(swapped) == targets
    assert tok is not None and tok.encode("hello") == tiny_tokenizer.encode("hello")
    ref = logits(model)
    torch.testing.assert_close(logits(loaded), ref, rtol=1e-5, atol=1e-5 * ref.abs().max())
    assert loaded_meta["recipe"]["pattern"] == "2:4"
    assert loaded_meta["export"]["format"] == "sparse24"


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_sparse24_roundtrip_bf16(arch, tmp_path, tiny_tokenizer):
    src, model, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer, arch, dtype=torch.bfloat16)
    export_model(src, tmp_path / "out", "sparse24")
    loaded, _ = load(tmp_path / "out")
    assert loaded.dtype == torch.bfloat16
    assert all(m.values.dtype == torch.bfloat16 for m in loaded.modules()
               if isinstance(m, Sparse24Linear))
    # same weights, and on CPU the 2:4 linear runs the same dense matmul: bit-exact
    assert torch.equal(logits(loaded), logits(model))


@pytest.mark.parametrize("fmt", ["bitmask", "dense"])
def test_bitmask_and_dense_roundtrip(fmt, tmp_path, tiny_tokenizer):
    # unstructured pruning: fine for both formats (sparse24 would refuse it)
    src, model, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer, "qwen3",
                                      pattern="unstructured")
    export_model(src, tmp_path / "out", fmt)
    assert is_export(tmp_path / "out") == fmt
    loaded, _ = load(tmp_path / "out")
    assert not any(isinstance(m, Sparse24Linear) for m in loaded.modules())
    for name in targets:
        assert torch.equal(loaded.get_submodule(name).weight, model.get_submodule(name).weight)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=1e-5, atol=1e-6)


def test_dense_export_is_a_plain_checkpoint(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    src, model, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer, "opt")
    export_model(src, tmp_path / "out", "dense", dtype="bfloat16")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert plain.dtype == torch.bfloat16
    torch.testing.assert_close(logits(plain), logits(model.to(torch.bfloat16)))


def test_load_plain_pruned_dir_and_activation_meta(tmp_path, tiny_tokenizer):
    spec = {"activation": {"model.layers.0.mlp.down_proj": {"threshold": 0.1}}}
    src, model, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer, extra=spec)
    assert is_export(src) is None
    result = load(src, activation="off")
    loaded, loaded_meta = result.model, result.meta
    torch.testing.assert_close(logits(loaded), logits(model))
    assert loaded_meta["activation"] == spec["activation"]
    export_model(src, tmp_path / "out", "sparse24")
    assert load(tmp_path / "out", activation="off").meta["activation"] == spec["activation"]
    # a section that promises thresholds without their file is refused, not silently ignored
    with pytest.raises(UsageError, match="sparsekit-activation.safetensors is missing"):
        load(src)


def test_negative_zero_in_pruned_slot_exports(tmp_path, tiny_tokenizer):
    def negate_zeros(model, targets):
        w = targets["model.layers.0.mlp.up_proj"].weight
        w[w == 0] = -0.0  # every group now shows 2 values and 2 negative zeros

    src, model, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer, edit=negate_zeros)
    export_model(src, tmp_path / "out", "sparse24")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        comp = f.get_tensor("model.layers.0.mlp.up_proj.compressed")
    assert not bool(torch.signbit(comp[comp == 0]).any())
    assert describe(tmp_path / "out")["sparsity"] == 0.5


# --- refusals and failure modes -----------------------------------------------------------

def test_non_24_layer_is_refused(tmp_path, tiny_tokenizer):
    def break_one(model, targets):
        targets["model.layers.1.self_attn.k_proj"].weight[3, 4:8] = 1.0

    src, _, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer, edit=break_one)
    with pytest.raises(UsageError) as info:
        export_model(src, tmp_path / "out", "sparse24")
    msg = str(info.value)
    assert "model.layers.1.self_attn.k_proj (1 groups)" in msg and "1 targeted layer" in msg
    assert "\n" not in msg
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


def test_many_non_24_layers_are_listed_with_a_count(tmp_path, tiny_tokenizer):
    src, _, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer, pattern="unstructured")
    expected = rf"{len(targets)} targeted layer.*and {len(targets) - 3} more"
    with pytest.raises(UsageError, match=expected):
        export_model(src, tmp_path / "out", "sparse24")


def test_interrupted_export_leaves_nothing(tmp_path, tiny_tokenizer, monkeypatch):
    src, _, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer)
    calls = []
    real_save = writer_mod.save_file

    def flaky_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(writer_mod, "save_file", flaky_save)
    parent = tmp_path / "exports"
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(src, parent / "out", "sparse24", max_shard_bytes=20_000)
    assert len(calls) == 3  # it did fail mid-way, after writing shards
    assert list(parent.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path, tiny_tokenizer):
    src, _, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(UsageError, match="already exists: choose another -o or pass --overwrite"):
        export_model(src, out, "sparse24")
    # --overwrite never empties a directory sparsekit did not write
    with pytest.raises(UsageError, match="not a sparsekit output.*--overwrite will not"):
        export_model(src, out, "sparse24", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    (out / "old.txt").unlink()
    export_model(src, out, "bitmask")  # an empty directory needs no --overwrite
    export_model(src, out, "sparse24", overwrite=True)  # an export may be replaced
    assert is_export(out) == "sparse24"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "pruned"]  # no temporaries
    with pytest.raises(UsageError, match="overlaps"):
        export_model(src, src, "dense", overwrite=True)
    with pytest.raises(UsageError, match="overlaps"):
        export_model(src, src / "inside", "dense")
    assert (src / "model.safetensors").exists() and not (src / "inside").exists()


def test_failed_overwrite_keeps_the_previous_export(tmp_path, tiny_tokenizer, monkeypatch):
    src, _, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer)
    out = tmp_path / "exports" / "out"
    export_model(src, out, "bitmask")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_mod, "save_file", broken_save)
    with pytest.raises(OSError, match="No space left"):
        export_model(src, out, "sparse24", overwrite=True, max_shard_bytes=20_000)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temporary left


def test_messages_and_layer_counts(tmp_path, tiny_tokenizer):
    src, _, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer, pattern="unstructured")
    with pytest.raises(UsageError, match="--format bitmask or --format dense$"):
        export_model(src, tmp_path / "s24", "sparse24")
    dense = export_model(src, tmp_path / "dense", "dense")
    assert dense["layers"] == len(targets) and dense["compressed_layers"] == 0
    bitmask = export_model(src, tmp_path / "bm", "bitmask")
    assert bitmask["layers"] == bitmask["compressed_layers"] == len(targets)
    meta = json.loads((tmp_path / "dense" / "sparsekit.json").read_text())
    assert meta["export"]["layers"] == len(targets)


# --- files: sharding, sizes, config block, metadata ---------------------------------------

def test_sharded_export_loads_identically(tmp_path, tiny_tokenizer):
    # sharded input too (as save_pretrained writes it for big models)
    src, model, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer, shard="60KB")
    assert (src / "model.safetensors.index.json").exists()
    export_model(src, tmp_path / "one", "sparse24")
    seen = []
    summary = export_model(src, tmp_path / "many", "sparse24", max_shard_bytes=20_000,
                           progress=lambda done, total, name: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == len(seen) == len(all_headers(src))
    files = sorted((tmp_path / "many").glob("*.safetensors"))
    assert summary["shards"] == len(files) > 3
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    stored = {k: f.name for f in files for k in st_header(f) if k != "__metadata__"}
    assert index["weight_map"] == stored
    stored_bytes = sum(nbytes(v) for v in all_headers(tmp_path / "many").values())
    assert index["metadata"]["total_size"] == stored_bytes
    for f in files:  # a layer's tensors stay together, shards respect the limit (or hold one group)
        assert f.stat().st_size < 20_000 + 8 + len(json.dumps(st_header(f))) + 1 or \
            len({k.rsplit(".", 1)[0] for k in st_header(f) if k != "__metadata__"}) == 1
    a, _ = load(tmp_path / "one")
    b, _ = load(tmp_path / "many")
    assert torch.equal(logits(a), logits(b))
    torch.testing.assert_close(logits(b), logits(model), rtol=1e-5, atol=1e-5)


def test_sparse24_linear_bytes_are_9_16_of_dense(tmp_path, tiny_tokenizer):
    src, model, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer, "gemma3",
                                      dtype=torch.bfloat16)
    summary = export_model(src, tmp_path / "out", "sparse24")
    headers = all_headers(tmp_path / "out")
    compressed = bitmask = dense = 0
    for name in targets:
        n, k = model.get_submodule(name).weight.shape
        dense += n * k * 2
        assert headers[f"{name}.compressed"]["dtype"] == "BF16"
        assert headers[f"{name}.compressed"]["shape"] == [n, k // 2]
        assert headers[f"{name}.bitmask"]["dtype"] == "U8"
        assert headers[f"{name}.shape"]["dtype"] == "I64"
        assert headers[f"{name}.shape"]["shape"] == [2, 1]
        assert f"{name}.weight" not in headers
        compressed += nbytes(headers[f"{name}.compressed"])
        bitmask += nbytes(headers[f"{name}.bitmask"])
    assert (compressed + bitmask) * 16 == dense * 9
    assert summary["linear_dense_bytes"] == dense
    assert summary["linear_bytes"] == compressed + bitmask + 16 * len(targets)
    info = describe(tmp_path / "out")
    assert info["linear_bytes"] == summary["linear_bytes"]
    assert info["compressed_layers"] == len(targets) and info["sparsity"] == 0.5
    assert info["format"] == "sparse24" and info["dtype"] == "bfloat16"
    assert info["weight_bytes"] == (tmp_path / "out" / "model.safetensors").stat().st_size


def test_config_block_and_metadata(tmp_path, tiny_tokenizer):
    src, model, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer, "llama")
    export_model(src, tmp_path / "out", "sparse24")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    block = config["quantization_config"]
    assert set(block) == {"quant_method", "config_groups", "sparsity_config", "transform_config",
                          "version"}
    assert block["quant_method"] == "compressed-tensors" and block["transform_config"] == {}
    assert block["config_groups"] == writer_mod.LOAD_HINT  # refused by loaders that cannot decode
    sc = block["sparsity_config"]
    assert sc["format"] == "sparse-24-bitmask" and sc["sparsity_structure"] == "2:4"
    assert sc["targets"] == ["Linear"] and sc["ignore"] == ["lm_head"]
    assert sc["registry_requires_subclass"] is False
    zeros = sum(int((p == 0).sum()) for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert sc["global_sparsity"] == zeros / total
    assert 0.2 < sc["global_sparsity"] < 0.5  # embeddings and lm_head count (dense)
    meta = json.loads((tmp_path / "out" / "sparsekit.json").read_text())
    assert meta["layers"].keys() == set(targets) and meta["export"]["format"] == "sparse24"
    assert meta["export"]["compressed_tensors_format"] == "sparse-24-bitmask"
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        st_meta = f.metadata()
    assert st_meta["format"] == "pt"
    assert json.loads(st_meta["sparsekit"])["export_format"] == "sparse24"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "out" / name).exists()

    export_model(src, tmp_path / "bm", "bitmask")
    config = json.loads((tmp_path / "bm" / "config.json").read_text())
    sc = config["quantization_config"]["sparsity_config"]
    assert sc["format"] == "sparse-bitmask"
    headers = all_headers(tmp_path / "bm")
    name = targets[0]
    n, k = model.get_submodule(name).weight.shape
    assert headers[f"{name}.shape"]["shape"] == [2]
    assert headers[f"{name}.row_offsets"]["shape"] == [n]
    assert headers[f"{name}.compressed"]["shape"] == [n * k // 2]


def test_tied_embeddings_roundtrip(tmp_path, tiny_tokenizer):
    src, model, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer, "gemma3", tied=True)
    export_model(src, tmp_path / "out", "sparse24")
    assert "lm_head.weight" not in all_headers(tmp_path / "out")
    loaded, _ = load(tmp_path / "out")
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    torch.testing.assert_close(logits(loaded), logits(model), rtol=1e-5, atol=1e-5)


def test_export_dtype_cast_and_load_dtype(tmp_path, tiny_tokenizer):
    src, model, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer, "llama")
    summary = export_model(src, tmp_path / "out", "sparse24", dtype="bfloat16")
    assert summary["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert all_headers(tmp_path / "out")[f"{targets[0]}.compressed"]["dtype"] == "BF16"
    loaded, _ = load(tmp_path / "out")
    assert loaded.get_submodule(targets[0]).values.dtype == torch.bfloat16
    as_fp32, _ = load(tmp_path / "out", dtype="float32")
    assert as_fp32.get_submodule(targets[0]).values.dtype == torch.float32
    assert as_fp32.lm_head.weight.dtype == torch.float32
    assert torch.equal(as_fp32.get_submodule(targets[0]).to_dense_weight(),
                       loaded.get_submodule(targets[0]).to_dense_weight().float())
    # reference: transformers' own bf16 load of the pruned dir (model.to(bf16) would also
    # round the fp32 rotary buffers, which a bf16 load keeps in fp32)
    ref, _ = load(src, dtype="bfloat16")
    assert torch.equal(logits(loaded), logits(ref))


def test_loaded_sparse24_layers_hold_the_weights(tmp_path, tiny_tokenizer):
    src, model, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer, "opt")
    export_model(src, tmp_path / "out", "sparse24")
    loaded, _ = load(tmp_path / "out")
    for name in targets:
        mine, ref = loaded.get_submodule(name), model.get_submodule(name)
        assert isinstance(mine, Sparse24Linear)
        assert torch.equal(mine.to_dense_weight(), ref.weight)
        assert torch.equal(mine.bias, ref.bias)  # OPT linears have biases
    assert isinstance(loaded.lm_head, nn.Linear)


# --- other tools' checkpoints and the loader's refusals -----------------------------------

def rewrite(file: Path, change: dict) -> None:
    """Rewrite a safetensors file: ``change`` maps a name to a new tensor, or to None (drop)."""
    from safetensors.torch import save_file

    with safe_open(str(file), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    for key, value in change.items():
        if value is None:
            tensors.pop(key)
        else:
            tensors[key] = value
    save_file(tensors, str(file), metadata=metadata)


def pack_bits_by_hand(mask: torch.Tensor) -> torch.Tensor:
    """bool [N, K] -> uint8 [N, ceil(K/8)], bit i of byte j = column 8j+i (plain Python)."""
    rows = []
    for row in mask.tolist():
        row = row + [False] * (-len(row) % 8)
        rows.append([sum(1 << i for i in range(8) if row[8 * j + i]) for j in range(len(row) // 8)])
    return torch.tensor(rows, dtype=torch.uint8)


UP = "model.layers.0.mlp.up_proj"  # [128, 64] in the tiny llama


def other_tool_encoding(weight: torch.Tensor, row: int, one: int, three: int):
    """sparse-24-bitmask tensors as a tool might write them: in ``row``, group ``one`` marks only
    its single nonzero and group ``three`` marks its two nonzeros plus a zero (3 set bits), so
    the row still holds K/2 values but not 2 per group."""
    mask = weight != 0
    zero_col = 4 * three + int((~mask[row, 4 * three: 4 * three + 4]).nonzero()[0])
    mask[row, zero_col] = True
    assert int(mask[row, 4 * one: 4 * one + 4].sum()) == 1
    compressed = weight[mask].reshape(weight.shape[0], weight.shape[1] // 2)
    shape = torch.tensor([[weight.shape[0]], [weight.shape[1]]])
    return {f"{UP}.compressed": compressed, f"{UP}.bitmask": pack_bits_by_hand(mask),
            f"{UP}.shape": shape}


def test_other_tools_24_bitmask_is_decoded_via_dense(tmp_path, tiny_tokenizer):
    def edit(model, targets):  # row 5: group 0 keeps a single nonzero
        w = targets[UP].weight
        w[5, int((w[5, 0:4] != 0).nonzero()[0])] = 0.0

    src, model, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer, edit=edit)
    out = tmp_path / "out"
    export_model(src, out, "sparse24")
    weight = model.get_submodule(UP).weight.detach()
    tensors = other_tool_encoding(weight, row=5, one=0, three=3)
    with pytest.raises(ValueError):  # the direct conversion refuses it: the fallback is needed
        bitmask24_to_packed(*tensors.values())
    rewrite(out / "model.safetensors", tensors)
    loaded, _ = load(out)
    assert torch.equal(loaded.get_submodule(UP).to_dense_weight(), weight)
    assert torch.equal(logits(loaded), logits(model))


def test_other_tools_bitmask_that_is_not_24_is_refused(tmp_path, tiny_tokenizer):
    src, model, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer)
    out = tmp_path / "out"
    export_model(src, out, "sparse24")
    weight = model.get_submodule(UP).weight.detach().clone()
    # row 5: group 0 keeps 1 nonzero, group 3 gets a third one (still K/2 values in the row)
    weight[5, int((weight[5, 0:4] != 0).nonzero()[0])] = 0.0
    weight[5, 12 + int((weight[5, 12:16] == 0).nonzero()[0])] = 0.5
    mask = weight != 0
    tensors = {f"{UP}.compressed": weight[mask].reshape(128, 32),
               f"{UP}.bitmask": pack_bits_by_hand(mask),
               f"{UP}.shape": torch.tensor([[128], [64]])}
    rewrite(out / "model.safetensors", tensors)
    with pytest.raises(UsageError, match=rf"{UP} is stored as sparse-24-bitmask but is not 2:4"):
        load(out)


def edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_compression_config_block_is_read(tmp_path, tiny_tokenizer):
    # compressed-tensors 0.4-0.6 wrote the block under "compression_config", without quant_method
    src, model, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer)
    out = tmp_path / "out"
    export_model(src, out, "sparse24")

    def to_old_style(config):
        block = config.pop("quantization_config")
        config["compression_config"] = {"sparsity_config": block["sparsity_config"],
                                        "version": "0.5.0"}

    edit_config(out, to_old_style)
    assert is_export(out) == "sparse24"
    loaded, _ = load(out)
    assert sorted(n for n, m in loaded.named_modules() if isinstance(m, Sparse24Linear)) == targets
    assert torch.equal(logits(loaded), logits(model))


@pytest.fixture
def exported(tmp_path, tiny_tokenizer):
    src, model, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer)
    export_model(src, tmp_path / "out", "sparse24")
    return tmp_path / "out", model


def test_quantized_checkpoint_is_refused(exported):
    out, _ = exported
    group = {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float"}}
    edit_config(out, lambda c: c["quantization_config"].update(config_groups={"group_0": group}))
    with pytest.raises(UsageError, match="quantized compressed-tensors checkpoint"):
        load(out)


def test_stored_shape_mismatch_is_refused(exported):
    out, _ = exported
    rewrite(out / "model.safetensors", {f"{UP}.shape": torch.tensor([[64], [128]])})
    with pytest.raises(UsageError, match=rf"{UP} is stored as 64x128 but the model expects 128x64"):
        load(out)


def test_unused_tensors_warn_and_missing_tensors_fail(exported):
    out, model = exported
    rewrite(out / "model.safetensors", {"model.stray.weight": torch.ones(3)})
    with pytest.warns(UserWarning, match=r"1 stored tensor\(s\) not used.*model\.stray\.weight"):
        loaded, _ = load(out)
    assert torch.equal(logits(loaded), logits(model))  # the stray tensor changed nothing
    rewrite(out / "model.safetensors", {"model.norm.weight": None, "model.stray.weight": None})
    with pytest.raises(UsageError, match=r"lacks 1 tensor\(s\) the model needs, e.g. model\.norm"):
        load(out)
    rewrite(out / "model.safetensors", {f"{UP}.shape": None})
    with pytest.raises(UsageError, match=rf"{UP} has .compressed and .bitmask but no .shape"):
        load(out)


# --- damaged files: one line naming the file and the fix -----------------------------------

def truncate(file: Path, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def one_line(info) -> str:
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_truncated_pruned_dir_is_reported_before_work(tmp_path, tiny_tokenizer):
    from sparsekit.files.layout import check_safetensors

    src, _, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer)
    assert check_safetensors(src) == [src / "model.safetensors"]
    truncate(src / "model.safetensors")
    for call in (lambda: export_model(src, tmp_path / "out", "sparse24"), lambda: load(src),
                 lambda: check_safetensors(src)):
        with pytest.raises(UsageError) as info:
            call()
        msg = one_line(info)
        assert msg.startswith(f"{src / 'model.safetensors'}: damaged safetensors file (truncated")
        assert msg.endswith("prune again with `sparsekit prune` (or copy the directory again)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


def test_truncated_export_is_reported(exported):
    out, _ = exported
    truncate(out / "model.safetensors", 0.9)
    for call in (load, describe):
        with pytest.raises(UsageError, match="truncated: .*: export it again with `sparsekit "
                                             "export`$") as info:
            call(out)
        one_line(info)
