"""A plug-in is its own module plus one registration line: a toy pruning method written here (a
record and its select function) shows up in `prune --help` with its option, is validated like
the built-in ones, prunes through the library and the command line, and is recorded in
sparsekit.json."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

import sparsekit
from sparsekit.anatomy import prunable_linears
from sparsekit.errors import UsageError
from sparsekit.pruning.methods import METHODS
from sparsekit.pruning.plugins import Method, SelectArgs, Selection
from sparsekit.recipe import make_recipe, recipe_from_json
from sparsekit.registry import at_least, option


# --- the toy method: everything it is, in one place --------------------------------------------------
@dataclass(frozen=True)
class StrideOptions:
    stride_offset: int = option(0, "--stride-offset", "stride: the first column pruned in every row.",
                                check=at_least(0))


def _stride_select(weight: torch.Tensor, stats, args: SelectArgs) -> Selection:
    """Prune every k-th column starting at the offset, k = round(1 / sparsity) (data-free)."""
    k = max(1, round(1 / args.sparsity))
    mask = torch.zeros_like(weight, dtype=torch.bool)
    mask[:, args.options.stride_offset::k] = True
    return Selection(mask)


STRIDE = Method("stride", "every k-th input column, k = 1 / sparsity", StrideOptions, select=_stride_select)


@pytest.fixture
def stride_registered():
    METHODS.register(STRIDE)   # the one registration line
    try:
        yield STRIDE
    finally:
        METHODS.unregister("stride")


def test_toy_method_appears_in_help_and_is_validated(stride_registered, cli):
    code, stdout, _ = cli("prune", "--help")
    text = " ".join(stdout.split())  # the help is wrapped to the terminal width
    assert code == 0 and "stride (every k-th input column, k = 1 / sparsity)" in text
    assert "--stride-offset <int> stride: the first column pruned in every row." in text
    with pytest.raises(UsageError, match="--stride-offset applies to --method stride only: drop it"):
        make_recipe(method="wanda", stride_offset=1)
    with pytest.raises(UsageError, match="--stride-offset must be at least 0, got -1"):
        make_recipe(method="stride", stride_offset=-1)
    assert not make_recipe(method="stride", sparsity=0.25).needs_statistics  # it reads no statistics


def test_toy_method_prunes_through_the_library_and_is_recorded(stride_registered, tiny_model_dir, tmp_path):
    recipe = make_recipe(method="stride", sparsity=0.25, stride_offset=1)
    result = sparsekit.prune(str(tiny_model_dir("llama")), recipe, tmp_path / "out")
    for name, lin in prunable_linears(result.loaded.model).items():
        w = lin.weight
        expected = torch.zeros_like(w, dtype=torch.bool)
        expected[:, 1::4] = True
        assert torch.equal(w == 0, expected), name   # exactly the toy's pattern, nothing else
    meta = json.loads((tmp_path / "out" / "sparsekit.json").read_text())
    assert meta["recipe"]["method"] == "stride" and meta["recipe"]["stride_offset"] == 1
    assert recipe_from_json(meta["recipe"]) == recipe
    assert meta["achieved_sparsity"] == pytest.approx(0.25)


def test_toy_method_runs_from_the_command_line(stride_registered, cli, tiny_model_dir, tmp_path):
    code, stdout, stderr = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "out", "--method", "stride",
                               "--sparsity", "0.5", "--stride-offset", "1", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["recipe"]["stride_offset"] == 1 and doc["achieved_sparsity"] == pytest.approx(0.5)
    code, _, stderr = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "other", "--stride-offset", "1")
    assert code == 2 and "--stride-offset applies to --method stride only" in stderr


def test_unregistered_method_is_gone(cli):
    assert "stride" not in METHODS
    code, stdout, _ = cli("prune", "--help")
    assert "--stride-offset" not in stdout
    with pytest.raises(TypeError, match="stride_offset"):
        make_recipe(method="wanda", stride_offset=1)


def test_a_searching_allocator_is_a_plan_function(tiny_model_dir, tmp_path):
    """An allocator that decides the layer sparsities itself (as a search would) plugs in through
    `plan`: it sees the dense model and the calibration windows, and its plan is applied and recorded."""
    from sparsekit.pruning.allocation import weighted_mean
    from sparsekit.pruning.allocators import ALLOCATORS
    from sparsekit.pruning.plugins import Allocator

    seen = {}

    def ramp(context, options):
        seen["calibration"] = tuple(context.calibration.shape)
        n = len(context.groups)
        base = [context.recipe.sparsity + 0.1 * (i - (n - 1) / 2) for i in range(n)]
        shift = context.recipe.sparsity - weighted_mean(base, context.params)
        return [b + shift for b in base], list(range(n))

    ALLOCATORS.register(Allocator("ramp", "a ramp over the layers", plan=ramp, reads_data=True))
    try:
        (tmp_path / "t.txt").write_text("some calibration text for the ramp " * 50)
        recipe = make_recipe(method="wanda", sparsity=0.5, layerwise="ramp",
                             calibration=sparsekit.make_calibration(data=str(tmp_path / "t.txt"), nsamples=2,
                                                                    seqlen=16))
        result = sparsekit.prune(str(tiny_model_dir("llama")), recipe)
        alloc = result.run.allocation
        assert seen["calibration"] == (2, 16) and list(alloc.values())[0] < list(alloc.values())[-1]
        assert result.meta["layer_sparsity"] == alloc and result.meta["recipe"]["layerwise"] == "ramp"
        assert weighted_mean(list(alloc.values()), [1] * len(alloc)) == pytest.approx(0.5)
        assert result.sparsity.overall == pytest.approx(0.5, abs=0.01)
    finally:
        ALLOCATORS.unregister("ramp")
