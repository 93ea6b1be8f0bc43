"""sparsekit prune on the command line: what it writes, one-line errors for bad input, interrupted and
existing outputs, layer-wise allocation and DSnoT as the user sees them, options checked before
loading."""

import json

import pytest

from conftest import data_file


def prune_args(model_dir, out, *extra):
    """A prune command; calibration data only for a run that reads it (magnitude alone refuses it)."""
    reads = "magnitude" not in extra or any(f in extra for f in ("--refine", "--activation", "--layerwise"))
    data = ["--data", data_file("valid"), "--nsamples", 4, "--seqlen", 32] if reads else []
    return ["prune", model_dir, "-o", out, *data, *extra]


def test_cli_prune_writes_model_and_recipe(tiny_model_dir, cli, tmp_path):
    out = tmp_path / "pruned"
    code, stdout, _ = cli(*prune_args(tiny_model_dir("llama"), out, "--method", "wanda", "--pattern", "2:4", "--json"))
    assert code == 0
    summary = json.loads(stdout)
    meta = json.loads((out / "sparsekit.json").read_text())
    assert summary["recipe"] == meta["recipe"]
    recipe = meta["recipe"]
    cal = recipe["calibration"]
    assert (recipe["method"], recipe["pattern"], recipe["sparsity"], cal["nsamples"], cal["seqlen"],
            cal["seed"], cal["sampling"], cal["bos"]) == ("wanda", "2:4", 0.5, 4, 32, 0, "random", "never")
    assert set(recipe["versions"]) >= {"sparsekit", "torch", "transformers"}
    assert len(meta["layers"]) == 14 and all(v["achieved"] == 0.5 for v in meta["layers"].values())
    assert meta["achieved_sparsity"] == 0.5
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    # eval and info see the sparsity of the saved model
    code, stdout, _ = cli("eval", out, "--data", data_file("test"), "--seqlen", 32, "--max-windows", 2, "--json")
    assert code == 0 and json.loads(stdout)["weight_sparsity"] == 0.5
    code, stdout, _ = cli("info", out, "--json")
    assert code == 0 and json.loads(stdout)["linear_sparsity"] == 0.5
    # the table form
    code, stdout, _ = cli(*prune_args(tiny_model_dir("llama"), tmp_path / "t", "--method", "magnitude"))
    assert code == 0 and "Pruned layers" in stdout and "achieved" in stdout


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.0"], "outside [0, 1)"),
    (["--sparsity", "-0.1"], "outside [0, 1)"),
    (["--pattern", "2:4", "--sparsity", "0.6"], "2:4 prunes exactly 2/4 = 0.5 of the weights but --sparsity is 0.6"),
    (["--pattern", "3:5", "--sparsity", "0.6"], "3:5 does not divide layer model.layers.0.self_attn.q_proj: its input dimension 64"),
    (["--pattern", "2of4"], "invalid sparsity pattern"),
    (["--method", "obc"], "unknown --method 'obc'"),
    (["--targets", "nothing-matches"], "no linear layers match"),
    (["--data", "missing.txt"], "no such file"),
])
def test_cli_prune_bad_input(args, message, tiny_model_dir, cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = cli("prune", tiny_model_dir("llama"), "-o", out, "--nsamples", 2, "--seqlen", 16,
                               "--data", data_file("valid"), *args)
    assert code == 2, stderr
    assert message in stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def test_interrupted_prune_leaves_no_output(tiny_model_dir, cli, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    def boom(self, path, *a, **k):
        (path / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", boom)
    out = tmp_path / "out"
    code, _, _ = cli(*prune_args(tiny_model_dir("llama"), out, "--method", "magnitude"))
    assert code == 130
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tiny_model_dir, cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, stderr = cli(*prune_args(tiny_model_dir("llama"), out, "--method", "magnitude"))
    assert code == 2 and "--overwrite" in stderr and (out / "keep.txt").exists()
    # --overwrite never empties a directory that sparsekit did not write
    code, _, stderr = cli(*prune_args(tiny_model_dir("llama"), out, "--method", "magnitude", "--overwrite"))
    assert code == 2 and (out / "keep.txt").exists() and len(stderr.strip().splitlines()) == 1
    (out / "keep.txt").unlink()
    code, _, _ = cli(*prune_args(tiny_model_dir("llama"), out, "--method", "magnitude"))
    assert code == 0 and (out / "sparsekit.json").exists()
    first = (out / "sparsekit.json").read_text()
    code, _, _ = cli(*prune_args(tiny_model_dir("llama"), out, "--method", "magnitude", "--sparsity", "0.3",
                                 "--overwrite"))
    assert code == 0 and (out / "sparsekit.json").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_layerwise_table_json_and_reuse_as_a_file(tiny_model_dir, cli, tmp_path):
    model_dir = tiny_model_dir("gemma3")
    calib = ["--data", data_file("valid"), "--nsamples", 4, "--seqlen", 32]
    code, stdout, _ = cli("prune", model_dir, "-o", tmp_path / "dlp", "--layerwise", "dlp", "--sparsity", "0.6", *calib)
    assert code == 0 and "Layer sparsities (dlp)" in stdout and "mean Wanda score" in stdout
    meta = json.loads((tmp_path / "dlp" / "sparsekit.json").read_text())
    assert set(meta["layer_sparsity"]) == {"model.layers.0", "model.layers.1", "model.layers.2"}
    assert meta["recipe"]["layerwise"] == "dlp" and meta["recipe"]["dlp_alpha"] == 0.15
    # the written allocation is a valid --layerwise file (magnitude needs no data at all)
    code, stdout, _ = cli("prune", model_dir, "-o", tmp_path / "again", "--method", "magnitude", "--per-row",
                          "--layerwise", str(tmp_path / "dlp" / "sparsekit.json"), "--json")
    assert code == 0, stdout
    assert json.loads(stdout)["layer_sparsity"] == meta["layer_sparsity"]


def test_bad_allocation_file_fails_before_any_calibration(tiny_model_dir, cli, tmp_path, monkeypatch):
    import sparsekit.data

    def no_data(*a, **k):
        raise AssertionError("calibration data was prepared before the allocation file was checked")

    monkeypatch.setattr(sparsekit.data, "calibration_windows", no_data)
    alloc = tmp_path / "alloc.json"
    alloc.write_text(json.dumps({"model.layers.0": 0.5, "model.layers.7": 0.5}))
    code, _, stderr = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "out", "--layerwise", alloc,
                          "--data", data_file("valid"), "--nsamples", 2, "--seqlen", 16)
    assert code == 2 and "model.layers.7" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_dsnot_reports_swaps(tiny_model_dir, cli, tmp_path):
    code, stdout, _ = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "out", "--refine", "dsnot",
                          "--pattern", "2:4", "--data", data_file("valid"), "--nsamples", 4, "--seqlen", 32)
    assert code == 0 and "DSnoT swaps" in stdout and "DSnoT" in stdout
    meta = json.loads((tmp_path / "out" / "sparsekit.json").read_text())
    assert meta["recipe"]["refine"] == "dsnot" and meta["recipe"]["dsnot_cycles"] == 50
    assert all("swaps" in v for v in meta["layers"].values()) and meta["achieved_sparsity"] == 0.5


@pytest.mark.parametrize("args, message", [
    (["--pattern", "1:4", "--sparsity", "0.5"], "pattern 1:4 prunes exactly 1/4"),
    (["--method", "magnitude", "--stats", "{stats}"], "--method magnitude uses no calibration statistics"),
    (["--stats", "{stats}", "--data", "{data}"], "--data would be ignored"),
    (["--stats", "{stats}", "--nsamples", "4", "--seed", "3"], "--nsamples, --seed would be ignored"),
    (["--stats", "{missing}"], "no such file"),
    (["--nsamples", "0"], "--nsamples must be at least 1"),
    (["--seqlen", "0"], "--seqlen must be at least 2"),
    (["--seqlen", "1"], "--seqlen must be at least 2"),
    (["--seqlen", "-5"], "--seqlen must be at least 2"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--method", "sparsegpt", "--blocksize", "0"], "--blocksize must be at least 1"),
    (["--method", "sparsegpt", "--percdamp", "-1"], "--percdamp must be a positive"),
    (["--sampling", "foo"], "unknown --sampling 'foo'"),
    (["--method", "obc"], "unknown --method 'obc'"),
    (["--ignore", "layers.(0"], "not a valid regular expression"),
    (["--data", "{missing}"], "no such file"),
    (["--bos", "maybe"], "unknown --bos 'maybe'"),
    (["--save-dtype", "int8"], "unknown --save-dtype 'int8'"),
    (["--layerwise", "dlp", "--pattern", "2:4"], "an N:M pattern fixes"),
    (["--dtype", "float8"], "unknown --dtype 'float8'"),
    (["--device", "tpu"], "unknown --device 'tpu'"),
])
def test_cli_rejects_bad_options_before_loading(args, message, cli, tmp_path, monkeypatch):
    """Each bad option is one line and exit code 2, found before the model is even looked at."""
    import sparsekit.loading

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(sparsekit.loading, "load_model", no_loading)
    monkeypatch.setattr(sparsekit.loading, "load", no_loading)
    monkeypatch.setattr(sparsekit.loading, "load_config", no_loading)
    stats = tmp_path / "s.safetensors"
    stats.write_bytes(b"x")
    data = tmp_path / "d.txt"
    data.write_text("some text\n")
    fill = {"stats": stats, "data": data, "missing": tmp_path / "missing.txt"}
    args = [a.format(**fill) for a in args]
    out = tmp_path / "out"
    code, _, stderr = cli("prune", "no-such-model-dir-needed", "-o", out, *args)
    assert code == 2, stderr
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()
