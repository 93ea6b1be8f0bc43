"""The plug-in registry: options built from an entry's dataclass (refused for another entry,
checked, defaulted), help text, consistency between entries that share an option, and the
recipe's JSON round trip through every registry."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest

from sparsekit.errors import UsageError
from sparsekit.recipe import Calibration, make_calibration, make_recipe, recipe_from_json
from sparsekit.registry import Plugin, Registry, at_least, option


@dataclass(frozen=True)
class AOptions:
    width: int = option(4, "--width", "a: how wide.", check=at_least(2))
    loud: bool = option(False, "--loud", "a: shout.")


@dataclass(frozen=True)
class BOptions:
    width: int = option(8, "--width", "b: how wide.", check=at_least(2))


@dataclass(frozen=True)
class Clash:
    width: float = option(1.0, "--width", "c: a float.")


def registry() -> Registry:
    return Registry("thing", "--thing", (Plugin("a", "the first", AOptions), Plugin("b", "the second", BOptions),
                                         Plugin("c", "no options")))


def test_options_are_made_checked_and_defaulted():
    reg = registry()
    assert reg.make_options("a", {}) == AOptions()
    assert reg.make_options("a", {"width": 3, "loud": True, "unrelated": 1}) == AOptions(3, True)
    assert reg.make_options("b", {"width": 5}) == BOptions(5)
    assert reg.make_options("c", {"width": None, "loud": False}) is None
    with pytest.raises(UsageError, match=r"^--width must be at least 2, got 1$"):
        reg.make_options("b", {"width": 1})
    with pytest.raises(UsageError, match=r"^--loud applies to --thing a only: drop it$"):
        reg.make_options("b", {"loud": True})
    with pytest.raises(UsageError, match=r"^--width applies to --thing a or b only: drop it$"):
        reg.make_options("c", {"width": 3})
    with pytest.raises(UsageError, match=r"^unknown --thing 'd': use one of a, b, c$"):
        reg.make_options("d", {})
    assert Registry.options_json(AOptions(3)) == {"width": 3, "loud": False}


def test_specs_help_and_registration_rules():
    reg = registry()
    specs = reg.option_specs()
    assert list(specs) == ["width", "loud"] and specs["width"].owners == ("a", "b")
    assert specs["width"].type is int and specs["loud"].type is bool and specs["width"].flag == "--width"
    assert reg.help_text("Pick: ") == "Pick: a (the first); b (the second); c (no options)."
    with pytest.raises(ValueError, match="already registered"):
        reg.register(Plugin("a", "again"))
    with pytest.raises(ValueError, match="differs"):
        reg.register(Plugin("clash", "a float width", Clash))
    assert "clash" not in reg  # a refused entry leaves the registry as it was
    assert reg.unregister("c").name == "c" and list(reg) == ["a", "b"]


@pytest.mark.parametrize("kwargs", [
    dict(method="sparsegpt", pattern="2:4", blocksize=64, percdamp=0.05, refine="dsnot", dsnot_cycles=7,
         dsnot_skip="mlp"),
    dict(method="wanda", sparsity=0.6, layerwise="owl", owl_m=3.0, owl_lambda=0.1),
    dict(method="magnitude", per_row=True, sparsity=0.3),
    dict(method="wanda", layerwise="dlp", dlp_alpha=0.2, activation="wina", act_sparsity=0.4,
         act_allocation="greedy", act_mode="decode"),
    dict(method="none", activation="chess", act_sparsity=0.25),
])
def test_recipe_json_round_trip(kwargs):
    reads_data = kwargs["method"] != "magnitude"
    calibration = make_calibration(data="valid.txt", nsamples=16, seqlen=64, seed=3) if reads_data else None
    recipe = make_recipe(calibration=calibration, **kwargs)
    doc = json.loads(json.dumps(recipe.to_json()))
    # a recipe that reads no statistics records no calibration: it comes back with the default one
    expected = recipe if recipe.needs_statistics else dataclasses.replace(recipe, calibration=Calibration())
    assert recipe_from_json(doc) == expected
    assert doc["method"] == kwargs["method"] and list(doc)[:2] == ["method", "sparsity"]
    assert list(doc)[-2:] == ["pattern", "calibration"]
