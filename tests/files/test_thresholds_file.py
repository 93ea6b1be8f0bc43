"""Thresholds file: bit-for-bit round trip, a dense load without sparsekit, install at load. Written
as `sparsekit prune --activation` writes it: `activation_file` gives the checked section, tensors
and metadata, and the model directory writer saves them as a side file."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from sparsekit.errors import UsageError
from sparsekit.files.modeldir import write_model_dir
from sparsekit.files.thresholds import ACTIVATION_FILE, activation_file, load_activation
from sparsekit.loading import install_saved_activation
from sparsekit.runtime.act_sparse import activation_modules, install_activation_sparsity


def _recipe(model):
    g = torch.Generator().manual_seed(0)
    l0 = "model.layers.0"
    tensors = {
        f"{l0}.self_attn.q_proj.threshold": torch.tensor(0.123456789, dtype=torch.float32),
        f"{l0}.self_attn.k_proj.threshold": torch.tensor(0.0),
        f"{l0}.self_attn.k_proj.scale": torch.rand(64, generator=g),
        f"{l0}.mlp.act_fn.threshold": torch.rand(128, generator=g),
    }
    tensors[f"{l0}.mlp.act_fn.threshold"][7] = float("inf")
    sites = {f"{l0}.self_attn.q_proj": {"where": "input", "role": "attn_in", "sparsity": 0.5},
             f"{l0}.self_attn.k_proj": {"where": "input", "role": "attn_in", "sparsity": 0.25},
             f"{l0}.mlp.act_fn": {"where": "output", "role": "mlp_act", "sparsity": 0.6}}
    section = {"method": "wina", "target": 0.5, "allocation": "greedy", "mode": "all", "sites": sites}
    return tensors, section


def save_with_model(directory, tensors, section, model=None):
    """A model directory with the thresholds file beside the weights and the section in
    sparsekit.json, as the prune workflow writes it; returns the section."""
    section, data, metadata = activation_file(tensors, section)
    write_model_dir(model if model is not None else tiny_model("llama"), None, directory, {"activation": section},
                    side_files={ACTIVATION_FILE: (data, metadata)})
    return section


def installed_tensors(model) -> dict[str, torch.Tensor]:
    """The thresholds (and scales) the installed wrappers hold, named as on disk."""
    out = {}
    for name, m in activation_modules(model).items():
        out[f"{name}.threshold"] = m.threshold.detach().to("cpu")
        if m.scale is not None:
            out[f"{name}.scale"] = m.scale.detach().to("cpu")
    return out


def test_round_trip_bit_for_bit(tmp_path):
    tensors, section = _recipe(None)
    written = save_with_model(tmp_path / "m", tensors, section)
    assert written["file"] == ACTIVATION_FILE and written["format"] == "sparsekit-activation"
    assert json.loads((tmp_path / "m" / "sparsekit.json").read_text())["activation"] == written
    back, own = load_activation(tmp_path / "m", written)
    assert own == json.loads(json.dumps(written))
    assert back.keys() == tensors.keys()
    for k, t in tensors.items():
        assert back[k].dtype == torch.float32 and back[k].shape == t.shape
        assert torch.equal(back[k].view(torch.int32), t.view(torch.int32)), k


def test_directory_loads_dense_without_sparsekit_and_sparse_with_it(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    ids = torch.randint(3, 500, (1, 11))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    tensors, section = _recipe(model)
    meta = {"activation": save_with_model(tmp_path / "m", tensors, section, model)}
    # plain transformers: the thresholds file is not read, the model is the dense one
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, dense)
    assert not activation_modules(plain)
    # sparsekit: installed from the directory, same tensors, different output
    own = install_saved_activation(plain, tmp_path / "m", meta)
    assert own["method"] == "wina" and set(activation_modules(plain)) == set(section["sites"])
    saved = installed_tensors(plain)
    assert saved.keys() == tensors.keys()
    assert all(torch.equal(saved[k].view(torch.int32), tensors[k].view(torch.int32)) for k in tensors)
    with torch.no_grad():
        assert not torch.equal(plain(input_ids=ids).logits, dense)


def test_errors(tmp_path):
    tensors, section = _recipe(None)
    assert load_activation(tmp_path) is None
    with pytest.raises(UsageError, match="is missing"):
        load_activation(tmp_path, {"method": "teal"})
    written = save_with_model(tmp_path / "m", tensors, section)
    with pytest.raises(UsageError, match="does not match"):
        load_activation(tmp_path / "m", {**written, "method": "teal"})
    with pytest.raises(ValueError, match="no threshold tensor"):
        activation_file({}, section)
    with pytest.raises(ValueError, match="float32"):
        activation_file({"a.threshold": torch.zeros(2, 2)}, {"sites": {"a": {}}})
    (tmp_path / "m" / ACTIVATION_FILE).write_bytes(b"garbage")
    with pytest.raises(UsageError, match="cannot read"):
        load_activation(tmp_path / "m")


def test_install_uses_file_recipe_where(tmp_path):
    model = tiny_model("llama")
    tensors, section = _recipe(model)
    install_activation_sparsity(model, section, tensors)
    act = model.model.layers[0].mlp.act_fn
    x = torch.randn(2, 3, 128)
    assert act.where == "output"
    expected = torch.nn.functional.silu(x)
    expected = torch.where(expected.abs() > tensors["model.layers.0.mlp.act_fn.threshold"], expected, 0.0)
    assert torch.equal(act(x), expected)


def test_sketches_round_trip_through_statistics_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    from sparsekit.activation.sketch import ActivationSketch
    from sparsekit.files.thresholds import sketch_tensors, sketches_from_tensors

    a, b = ActivationSketch(5), ActivationSketch(3, histogram=False)
    a.update(torch.randn(20, 5))
    b.update(torch.randn(4, 3))
    sketches = {"model.layers.0.self_attn.q_proj": a, "model.layers.0.mlp.up_proj:output": b}
    flat = sketch_tensors(sketches)
    assert "model.layers.0.self_attn.q_proj/act.counts" in flat
    save_file({**flat, "model.layers.0.self_attn.q_proj/sq_norm": torch.ones(5)}, tmp_path / "stats.safetensors")
    back = sketches_from_tensors(load_file(tmp_path / "stats.safetensors"))
    assert back.keys() == sketches.keys()
    for key, sk in sketches.items():
        for field, t in sk.state_dict().items():
            assert torch.equal(back[key].state_dict()[field], t), (key, field)
