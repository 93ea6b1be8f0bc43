"""The pruning recipe: every option validated once, before any model is loaded (on the command line:
tests/cli/test_cli_prune.py)."""

import json

import pytest

from sparsekit.errors import UsageError
from sparsekit.pruning.methods import METHODS
from sparsekit.recipe import Calibration, make_calibration, make_recipe


def test_pattern_defines_the_sparsity():
    r = make_recipe(method="wanda", pattern="2:4")
    assert r.nm == (2, 4) and r.sparsity == 0.5 and r.pattern == "2:4"
    r = make_recipe(method="wanda", pattern="1:4")
    assert r.sparsity == 0.25
    assert make_recipe(method="wanda", pattern="1:4", sparsity=0.25).sparsity == 0.25
    assert make_recipe(method="wanda").sparsity == 0.5


def test_recipe_is_immutable_and_serialises():
    r = make_recipe(method="sparsegpt", sparsity=0.6, layerwise="owl", refine="dsnot", dsnot_skip="mlp")
    with pytest.raises(AttributeError):
        r.sparsity = 0.1
    doc = r.to_json()
    json.dumps(doc)
    assert doc["method"] == "sparsegpt" and doc["pattern"] == "unstructured" and doc["owl_m"] == 5.0
    assert doc["dsnot_skip"] == "mlp" and "dlp_alpha" not in doc and "per_row" not in doc
    assert r.needs_hessian and r.needs_statistics
    assert not make_recipe(method="magnitude").needs_statistics
    assert make_recipe(method="magnitude", refine="dsnot").needs_statistics


def test_every_method_is_one_record():
    assert set(METHODS) == {"magnitude", "wanda", "sparsegpt", "none"}
    for m in METHODS.values():
        assert m.name and m.help and (m.select is not None) == (m.name != "none")


@pytest.mark.parametrize("kwargs, message", [
    (dict(pattern="1:4", sparsity=0.5), "pattern 1:4 prunes exactly 1/4 = 0.25 of the weights but --sparsity is 0.5"),
    (dict(pattern="2:4", sparsity=0.6), "use --sparsity 0.5"),
    (dict(sparsity=1.0), "outside [0, 1)"),
    (dict(sparsity=float("nan")), "outside [0, 1)"),
    (dict(pattern="4:2"), "N:M needs 0 < N < M"),
    (dict(pattern="2of4"), "invalid sparsity pattern"),
    (dict(method="obc"), "unknown --method 'obc': use one of magnitude, wanda, sparsegpt, none"),
    (dict(method="none", pattern="2:4"), "--pattern needs weight pruning"),
    (dict(method="none", refine="dsnot"), "give a --method other than none"),
    (dict(method="wanda", per_row=True), "--per-row applies to --method magnitude only"),
    (dict(method="wanda", blocksize=64), "--blocksize applies to --method sparsegpt only"),
    (dict(method="wanda", percdamp=0.1), "--percdamp applies to --method sparsegpt only"),
    (dict(method="sparsegpt", blocksize=0), "--blocksize must be at least 1, got 0"),
    (dict(method="sparsegpt", percdamp=-1.0), "--percdamp must be a positive fraction"),
    (dict(method="sparsegpt", pattern="2:4", blocksize=126), "--blocksize 126 must be a multiple of M=4"),
    (dict(layerwise="owl", pattern="2:4"), "an N:M pattern fixes"),
    (dict(layerwise="fancy"), "unknown --layerwise 'fancy'"),
    (dict(layerwise="missing.json"), "--layerwise missing.json: no such file"),
    (dict(owl_m=3.0), "--owl-m applies to --layerwise owl only"),
    (dict(layerwise="dlp", owl_lambda=0.1), "--owl-lambda applies to --layerwise owl only"),
    (dict(layerwise="owl", owl_lambda=0.6), "use a value below 0.5"),
    (dict(layerwise="dlp", dlp_alpha=-0.1), "--dlp-alpha must be positive"),
    (dict(refine="grow"), "unknown --refine 'grow'"),
    (dict(dsnot_cycles=10), "--dsnot-cycles applies to --refine dsnot only"),
    (dict(dsnot_skip="mlp"), "--dsnot-skip applies to --refine dsnot only"),
    (dict(refine="dsnot", dsnot_cycles=-1), "--dsnot-cycles must be at least 0"),
    (dict(ignore="layers.(0"), "--ignore 'layers.(0' is not a valid regular expression"),
    (dict(targets="[mlp"), "--targets '[mlp' is not a valid regular expression"),
    (dict(refine="dsnot", dsnot_skip="*mlp"), "--dsnot-skip '*mlp' is not a valid regular expression"),
])
def test_inconsistent_recipes_are_refused(kwargs, message):
    with pytest.raises(UsageError) as info:
        make_recipe(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(nsamples=0), "--nsamples must be at least 1, got 0"),
    (dict(batch_size=0), "--batch-size must be at least 1, got 0"),
    (dict(seqlen=0), "--seqlen must be at least 2"),
    (dict(seqlen=1), "--seqlen must be at least 2"),
    (dict(seqlen=-5), "--seqlen must be at least 2"),
    (dict(sampling="foo"), "unknown --sampling 'foo': use one of random, first"),
    (dict(bos="sometimes"), "unknown --bos 'sometimes': use one of auto, always, never"),
    (dict(stats="x.safetensors", data="c4"), "so --data would be ignored"),
    (dict(stats="x.safetensors", nsamples=4, seed=1), "so --nsamples, --seed would be ignored"),
    (dict(stats="missing.safetensors"), "--stats missing.safetensors: no such file"),
])
def test_inconsistent_calibration_is_refused(kwargs, message):
    with pytest.raises(UsageError) as info:
        make_calibration(**kwargs)
    assert message in str(info.value)


def test_stats_with_a_method_that_reads_none_is_refused(tmp_path):
    stats = tmp_path / "s.safetensors"
    stats.write_bytes(b"x")
    with pytest.raises(UsageError, match="--method magnitude uses no calibration statistics"):
        make_recipe(method="magnitude", calibration=make_calibration(stats=str(stats)))
    # with a refiner the statistics are read, so the file itself is checked before anything loads
    with pytest.raises(UsageError, match=r"damaged statistics file \(only 1 bytes, not even a header\)"):
        make_recipe(method="magnitude", refine="dsnot", calibration=Calibration(stats=str(stats)))
