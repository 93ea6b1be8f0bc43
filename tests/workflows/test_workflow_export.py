"""The export library workflow: options and directories checked before any work, the summary, progress
and silence (the export itself: tests/export)."""

from __future__ import annotations

import pytest
from conftest import all_headers, make_pruned

from sparsekit.errors import UsageError
from sparsekit.exporting.writer import export_model
from sparsekit.workflows.export import export


@pytest.mark.parametrize("kwargs, message", [
    ({"format": "zip"}, "unknown --format 'zip': use one of sparse24, bitmask, dense"),
    ({"dtype": "int4"}, "unknown --dtype 'int4': use one of bfloat16, float16, float32"),
    ({"max_shard_size": 0}, "--max-shard-size must be a positive number of bytes, got 0"),
    ({"format": "dense", "compressed_tensors_compat": True},
     "--compressed-tensors-compat applies to --format sparse24 or bitmask: drop it"),
])
def test_workflow_refuses_options_before_any_work(kwargs, message, tmp_path, tiny_tokenizer):
    src, _, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer)
    calls = []
    with pytest.raises(UsageError) as info:
        export(src, tmp_path / "out", progress=lambda *a: calls.append(a), **kwargs)
    assert str(info.value) == message
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


def test_workflow_checks_the_directories_first(tmp_path, tiny_tokenizer):
    with pytest.raises(UsageError, match="no config.json: give the directory `sparsekit prune`"):
        export(tmp_path / "missing", tmp_path / "out")
    src, _, _ = make_pruned(tmp_path / "pruned", tiny_tokenizer)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep")
    with pytest.raises(UsageError, match="already exists: choose another -o or pass --overwrite"):
        export(src, tmp_path / "out", progress=lambda *a: pytest.fail("progress before checks"))
    with pytest.raises(UsageError, match="overlaps"):
        export(src, src / "inside")


def test_workflow_summary_progress_and_silence(tmp_path, tiny_tokenizer, capsys):
    src, model, targets = make_pruned(tmp_path / "pruned", tiny_tokenizer, shard="60KB")
    seen = []
    summary = export(src, tmp_path / "out", format="bitmask", dtype="bfloat16",
                     max_shard_size=20_000,
                     progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert capsys.readouterr() == ("", "")
    tensors = len(all_headers(src))
    assert seen == [("exporting bitmask", None, None)] + [
        ("exporting bitmask", i, tensors) for i in range(1, tensors + 1)]
    same = export_model(src, tmp_path / "same", "bitmask", max_shard_bytes=20_000,
                        dtype="bfloat16")
    for key in ("seconds", "out_dir"):
        summary.pop(key), same.pop(key)
    assert summary == same and summary["compressed_layers"] == len(targets)
    assert summary["shards"] > 1 and summary["dtype"] == "bfloat16"
    assert export(src, tmp_path / "out", format="dense", overwrite=True)["compressed_layers"] == 0
