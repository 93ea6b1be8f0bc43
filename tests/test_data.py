"""Data sources and window sampling."""

import json

import pytest
import torch

from conftest import data_file
from sparsekit.data import calibration_windows, load_rows, tokenize_rows, windows
from sparsekit.errors import UsageError


def test_local_formats_give_the_same_rows(tmp_path):
    rows = ["first row", "", "third row with more words"]
    (tmp_path / "a.txt").write_text("\n".join(rows) + "\n")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": r}) for r in rows) + "\n")
    (tmp_path / "a.json").write_text(json.dumps([{"text": r} for r in rows]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": rows}), tmp_path / "a.parquet")
    for suffix in ("txt", "jsonl", "json", "parquet"):
        assert load_rows(str(tmp_path / f"a.{suffix}")) == rows
    # a folder reads its files in name order
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "2.txt").write_text("second\n")
    (folder / "1.txt").write_text("first\n")
    assert load_rows(str(folder)) == ["first", "second"]


def test_bad_sources(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_rows(str(tmp_path / "missing.txt"))
    (tmp_path / "bad.jsonl").write_text('{"title": "x"}\n')
    with pytest.raises(UsageError, match="'text' field"):
        load_rows(str(tmp_path / "bad.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UsageError, match="unsupported data file type"):
        load_rows(str(tmp_path / "x.csv"))
    with pytest.raises(UsageError, match="only makes calibration data"):
        load_rows("self")


def test_windows_drop_the_remainder():
    ids = torch.arange(23)
    w = windows(ids, 5)
    assert w.shape == (4, 5) and w[-1, -1].item() == 19
    assert windows(ids, 5, max_windows=2).shape == (2, 5)
    with pytest.raises(UsageError, match="fewer than one window"):
        windows(ids, 24)


def test_calibration_sampling(tiny_tokenizer):
    path = str(data_file("valid"))
    ids = tokenize_rows(tiny_tokenizer, load_rows(path))
    first = calibration_windows(tiny_tokenizer, path, 4, 32, sampling="first")
    assert torch.equal(first, ids[:128].view(4, 32))
    a = calibration_windows(tiny_tokenizer, path, 6, 32, seed=3)
    b = calibration_windows(tiny_tokenizer, path, 6, 32, seed=3)
    c = calibration_windows(tiny_tokenizer, path, 6, 32, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every random window is a contiguous slice of the tokenized text
    every_window = ids.unfold(0, 32, 1)
    for row in a:
        assert (every_window == row).all(dim=1).any()
    with pytest.raises(UsageError, match="--sampling first needs"):
        calibration_windows(tiny_tokenizer, path, 10**6, 32, sampling="first")


def test_self_generated_calibration(tiny_tokenizer):
    from conftest import tiny_model

    model = tiny_model("llama")
    w = calibration_windows(tiny_tokenizer, "self", 3, 16, seed=0, model=model)
    assert w.shape == (3, 16)
    assert (w[:, 0] == tiny_tokenizer.bos_token_id).all()
    assert torch.equal(w, calibration_windows(tiny_tokenizer, "self", 3, 16, seed=0, model=model))
