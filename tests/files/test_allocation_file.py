"""The layer-wise allocation file (--layerwise FILE): layer names or indices, the mapping sparsekit.json
records, one-line errors (the allocation itself: tests/pruning/test_allocation.py)."""

from __future__ import annotations

import json

import pytest

from sparsekit.errors import UsageError
from sparsekit.files.allocation import ALLOCATION_KEY, load_allocation_file
from sparsekit.files.meta import prune_meta, write_meta

NAMES = [f"model.layers.{i}" for i in range(4)]


def _write(tmp_path, data, name="alloc.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def test_file_names_indices_and_round_trip(tmp_path):
    p = _write(tmp_path, {"model.layers.0": 0.4, "1": 0.5, "model.layers.2": 0, " 3 ": 0.75})
    assert load_allocation_file(p, NAMES) == [0.4, 0.5, 0.0, 0.75]
    # The mapping `sparsekit prune` writes into sparsekit.json reads back, from the file or its directory.
    meta = prune_meta(version="0", recipe={"method": "wanda"}, allocation=dict(zip(NAMES, [0.1, 0.2, 0.3, 0.4])),
                      layer_values=None, layers={}, achieved=0.25)
    assert ALLOCATION_KEY in meta
    out = tmp_path / "pruned"
    out.mkdir()
    write_meta(out, meta)
    assert load_allocation_file(out / "sparsekit.json", NAMES) == [0.1, 0.2, 0.3, 0.4]
    assert load_allocation_file(out, NAMES) == [0.1, 0.2, 0.3, 0.4]


@pytest.mark.parametrize(
    "content, match",
    [
        ({"model.layers.0": 0.5, "1": 0.5, "2": 0.5}, r"no sparsity for layer model\.layers\.3: add an entry"),
        ({"0": 0.5, "1": 0.5}, r"no sparsity for layer model\.layers\.2 and 1 more"),
        ({"0": 0.5, "1": 0.5, "2": 0.5, "3": 0.5, "model.layers.9": 0.5}, r"unknown layer 'model\.layers\.9'"),
        ({"0": 0.5, "1": 0.5, "2": 0.5, "3": 0.5, "4": 0.5}, r"unknown layer '4'.*indices 0\.\.3"),
        ({"0": 0.5, "1": 0.5, "2": 0.5, "3": 1.0},
         r"sparsity 1\.0 for layer model\.layers\.3 is not a number in \[0, 1\)"),
        ({"0": -0.1, "1": 0.5, "2": 0.5, "3": 0.5}, r"sparsity -0\.1 for layer model\.layers\.0"),
        ({"0": "0.5", "1": 0.5, "2": 0.5, "3": 0.5}, r"sparsity '0\.5' for layer model\.layers\.0"),
        ({"0": True, "1": 0.5, "2": 0.5, "3": 0.5}, r"sparsity True for layer model\.layers\.0"),
        ({"0": 0.5, "model.layers.0": 0.5, "1": 0.5}, r"layer model\.layers\.0 is given twice"),
        ('{"0": 0.5,, }', r"is not valid JSON \(line 1, column 11"),
        ('{"0": NaN, "1": 0.5, "2": 0.5, "3": 0.5}', r"sparsity nan for layer model\.layers\.0"),
        ("[0.5, 0.5, 0.5, 0.5]", r"must hold a JSON object mapping layer names.*model\.layers\.0"),
        ({}, r"must hold a JSON object"),
    ],
)
def test_file_errors_are_one_line_usage_errors(tmp_path, content, match):
    p = _write(tmp_path, content)
    with pytest.raises(UsageError, match=match) as info:
        load_allocation_file(p, NAMES)
    assert "\n" not in str(info.value) and str(p) in str(info.value)


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"allocation file .*nope\.json not found: give the path"):
        load_allocation_file(tmp_path / "nope.json", NAMES)
    with pytest.raises(UsageError, match=r"sparsekit\.json not found"):
        load_allocation_file(tmp_path, NAMES)  # a directory without sparsekit.json
