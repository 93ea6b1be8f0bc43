"""The pruned model directory writer (its side files in exports: tests/exporting/test_loader_plain.py)."""

from __future__ import annotations

import pytest

from sparsekit.files.modeldir import write_model_dir


def test_write_model_dir_refuses_badly_named_side_files(tmp_path):
    with pytest.raises(ValueError, match="sparsekit-<name>.safetensors"):
        write_model_dir(None, None, tmp_path / "x", {},
                        side_files={"thresholds.safetensors": ({}, None)})
    assert not (tmp_path / "x").exists()
