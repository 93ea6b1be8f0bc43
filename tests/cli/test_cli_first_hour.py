"""What a new user meets in their first hour: every input checked before work starts, one line and
exit code 2 for bad input, nothing silently wrong or lost."""

import json

import pytest
import torch

from conftest import data_file, tiny_model


def one_line(code, stderr, message):
    assert code == 2, stderr
    assert message in stderr, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_version_and_flag_help(cli):
    import sparsekit

    code, stdout, _ = cli("--version")
    assert code == 0 and stdout.strip() == f"sparsekit {sparsekit.__version__}"
    code, stdout, _ = cli("prune", "--help")
    assert code == 0 and "--overwrite" in stdout and "<bool>" not in stdout
    for option in ("--layerwise", "--refine", "--dsnot-cycles", "--bos", "--save-dtype", "--stats"):
        assert option in stdout


def never(what):
    """A stand-in that fails the test if it is called."""
    def fail(*a, **k):
        raise AssertionError(f"{what} before the refusal")
    return fail


@pytest.mark.parametrize("command", ["eval", "prune", "calibrate"])
def test_offline_default_datasets_fail_fast(command, tiny_model_dir, cli, tmp_path, monkeypatch):
    """The defaults (wikitext2 for eval, c4 otherwise) need the hub: offline, one line at once,
    before the model is loaded, without a connection attempt and without asking `datasets`."""
    import socket

    import datasets

    import sparsekit.loading

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    args = {"eval": ["eval", tiny_model_dir("llama")],
            "prune": ["prune", tiny_model_dir("llama"), "-o", tmp_path / "out"],
            "calibrate": ["calibrate", tiny_model_dir("llama"), "-o", tmp_path / "s.safetensors"]}[command]
    monkeypatch.setattr(sparsekit.loading, "load_model", never("the model was loaded"))
    monkeypatch.setattr(sparsekit.loading, "load", never("the model was loaded"))
    monkeypatch.setattr(datasets, "load_dataset", never("datasets.load_dataset was called"))
    monkeypatch.setattr(socket, "create_connection", never("a network connection was attempted"))
    monkeypatch.setattr(socket.socket, "connect", never("a network connection was attempted"))
    code, _, stderr = cli(*args)
    one_line(code, stderr, "pass a local")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"] or not any(tmp_path.iterdir())


def test_calibrate_asks_before_overwriting(tiny_model_dir, cli, tmp_path):
    model = tiny_model_dir("llama")
    stats = tmp_path / "s.safetensors"
    args = ["calibrate", model, "-o", stats, "--data", data_file("valid"), "--nsamples", 2, "--seqlen", 16]
    assert cli(*args)[0] == 0
    before = stats.read_bytes()
    code, _, stderr = cli(*args, "--seed", 5)
    one_line(code, stderr, "--overwrite")
    assert stats.read_bytes() == before
    code, _, _ = cli(*args, "--seed", 5, "--overwrite")
    assert code == 0 and stats.read_bytes() != before
    other = tmp_path / "notes.safetensors"
    other.write_bytes(b"not statistics")
    code, _, stderr = cli("calibrate", model, "-o", other, "--data", data_file("valid"), "--overwrite")
    assert code == 2 and other.read_bytes() == b"not statistics"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.safetensors", "s.safetensors"]


@pytest.mark.parametrize("command", ["prune", "calibrate", "export"])
def test_unwritable_output_is_found_before_work(command, tiny_model_dir, cli, tmp_path, monkeypatch):
    import sparsekit.loading

    def no_loading(*a, **k):
        raise AssertionError("loaded before the output was checked")

    monkeypatch.setattr(sparsekit.loading, "load_model", no_loading)
    monkeypatch.setattr(sparsekit.loading, "load", no_loading)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = blocker / "out"
    model = tiny_model_dir("llama")
    args = {"prune": ["prune", model, "-o", target, "--method", "magnitude"],
            "calibrate": ["calibrate", model, "-o", target, "--data", data_file("valid")],
            "export": ["export", model, "-o", target]}[command]
    code, _, stderr = cli(*args)
    assert code == 2 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_output_in_the_working_directory_is_refused(tiny_model_dir, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sparsekit.json").write_text("{}")
    code, _, stderr = cli("prune", tiny_model_dir("llama"), "-o", ".", "--method", "magnitude", "--overwrite")
    assert code == 2 and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparsekit.json"]


def test_truncated_model_is_one_line_before_work(tiny_model_dir, cli, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama"), model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for args in (["info", model], ["eval", model, "--data", data_file("test")],
                 ["prune", model, "-o", tmp_path / "out", "--method", "magnitude"],
                 ["calibrate", model, "-o", tmp_path / "s.safetensors", "--data", data_file("valid")]):
        code, _, stderr = cli(*args)
        one_line(code, stderr, "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_prune_saves_in_the_checkpoint_dtype(tiny_tokenizer, cli, tmp_path):
    from safetensors import safe_open

    model = tiny_model("llama", dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    tiny_tokenizer.save_pretrained(tmp_path / "bf16")

    def stored(path):
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            return f.get_tensor("model.layers.0.mlp.up_proj.weight").dtype

    args = ["prune", tmp_path / "bf16", "--method", "magnitude", "--json"]
    code, stdout, _ = cli(*args, "-o", tmp_path / "auto")  # computed in float32 on the CPU, saved as stored
    assert code == 0 and json.loads(stdout)["saved_dtype"] == "bfloat16" and stored(tmp_path / "auto") == torch.bfloat16
    code, stdout, _ = cli(*args, "-o", tmp_path / "f32", "--save-dtype", "float32")
    assert code == 0 and stored(tmp_path / "f32") == torch.float32
    with safe_open(str(tmp_path / "auto" / "model.safetensors"), framework="pt") as f:
        w = f.get_tensor("model.layers.0.mlp.up_proj.weight")
    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)


def test_interrupt_says_so_and_leaves_nothing(tiny_model_dir, cli, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", boom)
    code, _, stderr = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "out", "--method", "magnitude")
    assert code == 130 and "interrupted" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_summary_time_covers_the_whole_run(tiny_model_dir, cli, tmp_path, monkeypatch):
    """The reported total spans the whole run, from before loading to after saving, and holds every
    part. Timed on a clock the test moves itself (loading takes 7 s, saving 3 s, all else no time),
    so nothing is compared with the wall clock."""
    import time

    from transformers import PreTrainedModel

    import sparsekit.loading

    model = tiny_model_dir("llama")
    now = [1000.0]
    real_load, real_save = sparsekit.loading.load, PreTrainedModel.save_pretrained

    def load(*a, **k):
        loaded = real_load(*a, **k)
        now[0] += 7.0
        return loaded

    def save_pretrained(self, *a, **k):
        saved = real_save(self, *a, **k)
        now[0] += 3.0
        return saved

    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(sparsekit.loading, "load", load)
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)
    code, stdout, _ = cli("prune", model, "-o", tmp_path / "out", "--data", data_file("valid"),
                          "--nsamples", 2, "--seqlen", 16, "--json")
    assert code == 0
    seconds = json.loads(stdout)["seconds"]
    assert seconds["load"] == 7.0 and seconds["save"] == 3.0
    assert seconds["total"] == 10.0  # both ends of the run are inside the total
    assert all(v >= 0 for v in seconds.values()), seconds
    parts = seconds["load"] + seconds["prepare"] + seconds["activation"] + seconds["pruning"] + seconds["save"]
    assert parts <= seconds["total"] + 1e-3


def test_statistics_calibrated_with_another_bos_setting_are_refused(tiny_model_dir, cli, tmp_path):
    model = tiny_model_dir("llama")  # llama: --bos auto means never
    stats = tmp_path / "s.safetensors"
    calib = ["--data", data_file("valid"), "--nsamples", 2, "--seqlen", 16]
    code, stdout, _ = cli("calibrate", model, "-o", stats, *calib, "--json")
    assert code == 0 and json.loads(stdout)["bos"] == "never"
    code, _, stderr = cli("prune", model, "-o", tmp_path / "out", "--stats", stats, "--bos", "always")
    one_line(code, stderr, "was calibrated with --bos never but this run uses --bos always")
    code, stdout, _ = cli("prune", model, "-o", tmp_path / "out", "--stats", stats, "--json")
    assert code == 0 and json.loads(stdout)["recipe"]["calibration"]["bos"] == "never"
