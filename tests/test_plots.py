"""Plots: text bars proportional to the values, PNG files that are real images."""

import pytest

from sparsekit.plots import bar_png, lines_png, text_bars


def test_text_bars_are_proportional():
    text = text_bars(["a", "bb", "c"], [0.25, 0.5, 0.0], width=8)
    lines = text.splitlines()
    assert lines[0].startswith("a  ████ ") and lines[0].endswith("25.00%")
    assert lines[1].startswith("bb ████████ ") and lines[2].startswith("c           ")
    with pytest.raises(ValueError):
        text_bars(["a"], [1.0, 2.0])


def test_png_files_are_written(tmp_path):
    for path in (lines_png(tmp_path / "l.png", {"wanda": ([0.5, 0.6], [10.0, 20.0]), "x": ([0.5], [9.0])},
                           xlabel="sparsity", ylabel="ppl", logy=True),
                 bar_png(tmp_path / "b.png", ["0", "1"], [0.4, 0.6], ylabel="sparsity", hline=0.5)):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
