"""The first hour, again: refusals before any weight loads, nothing silently accepted, one writer
per output, what interrupted runs left, and summaries that say what they mean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO, data_file, tiny_model


def one_line(code, stderr, *parts):
    assert code == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    for part in parts:
        assert part in stderr, stderr


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights fails the test: what it guards is refused on the config and file headers."""
    import sparsekit.loading

    def never(*a, **k):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(sparsekit.loading, "load_model", never)
    monkeypatch.setattr(sparsekit.loading, "load", never)


@pytest.fixture
def opt_stats(tiny_model_dir, cli, tmp_path_factory):
    """A statistics file of another architecture (OPT)."""
    path = tmp_path_factory.mktemp("opt-stats") / "s.safetensors"
    code, _, stderr = cli("calibrate", tiny_model_dir("opt"), "-o", path, "--data", data_file("valid"),
                          "--nsamples", 2, "--seqlen", 16)
    assert code == 0, stderr
    return path


@pytest.mark.parametrize("case", ["bad json", "empty data", "nine-byte stats", "other architecture",
                                  "targets nothing", "pattern 2:5"])
def test_refused_before_any_weight_loads(case, tiny_model_dir, cli, tmp_path, request):
    model = tiny_model_dir("llama")
    out = tmp_path / "out"
    data = ["--data", data_file("valid"), "--nsamples", 2, "--seqlen", 16]
    if case == "bad json":
        (tmp_path / "alloc.json").write_text('{"model.layers.0": 0.5,')
        args, message = [*data, "--layerwise", tmp_path / "alloc.json"], "is not valid JSON"
    elif case == "empty data":
        (tmp_path / "empty.txt").write_text("\n \n")
        args, message = ["--data", tmp_path / "empty.txt"], "the data is empty"
    elif case == "nine-byte stats":
        (tmp_path / "s.safetensors").write_bytes(b"not stats")
        args, message = ["--stats", tmp_path / "s.safetensors"], "not a safetensors file"
    elif case == "other architecture":
        args, message = ["--stats", request.getfixturevalue("opt_stats")], "was computed on another model"
    elif case == "targets nothing":
        args, message = [*data, "--targets", "no_such_linear"], "no linear layers match --targets/--ignore"
    else:
        args, message = [*data, "--pattern", "2:5"], "2:5 does not divide layer"
    before = sorted(p.name for p in tmp_path.iterdir())
    request.getfixturevalue("no_weights")
    code, _, stderr = cli("prune", model, "-o", out, *args)
    one_line(code, stderr, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left behind, no lock


def test_calibrate_targets_nothing_before_weights(tiny_model_dir, cli, tmp_path, no_weights):
    code, _, stderr = cli("calibrate", tiny_model_dir("llama"), "-o", tmp_path / "s.safetensors", "--data",
                          data_file("valid"), "--targets", "nothing_matches")
    one_line(code, stderr, "no linear layers match")
    assert list(tmp_path.iterdir()) == []


def test_nothing_silently_accepted(tiny_model_dir, cli, tmp_path, no_weights):
    model = tiny_model_dir("llama")
    code, _, stderr = cli("prune", model, "-o", tmp_path / "out", "--method", "magnitude", "--data",
                          data_file("valid"))
    one_line(code, stderr, "--method magnitude uses no calibration data, so --data would be ignored: drop it")
    code, _, stderr = cli("eval", model, "--data", data_file("test"), "--act-mode", "all")
    one_line(code, stderr, "--act-mode all:", "has no activation-sparsity thresholds")
    assert list(tmp_path.iterdir()) == []


def test_offline_defaults_say_what_needs_data_and_the_local_choices(tiny_model_dir, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model = tiny_model_dir("llama")
    code, _, stderr = cli("prune", model, "-o", tmp_path / "out", "--method", "magnitude", "--layerwise", "owl")
    one_line(code, stderr, "--layerwise owl needs calibration text and the default is --data c4", "--data self")
    code, _, stderr = cli("calibrate", model, "-o", tmp_path / "s.safetensors")
    one_line(code, stderr, "calibrate needs calibration text", "--data self")
    code, _, stderr = cli("eval", model)
    one_line(code, stderr, "eval needs evaluation text and the default is --data wikitext2", "pass a local")


def test_overlapping_windows_and_a_created_parent_are_said(tiny_model_dir, cli, tmp_path):
    out = tmp_path / "new" / "dir" / "out"
    code, stdout, stderr = cli("prune", tiny_model_dir("llama"), "-o", out, "--data", data_file("valid"),
                               "--nsamples", 2000, "--seqlen", 64, "--json")
    assert code == 0, stderr
    assert f"note: created the directory {out.parent} for the output" in stderr
    assert "--nsamples 2000 x --seqlen 64 = 128000 tokens drawn from a text of" in stderr
    assert json.loads(stdout)["recipe"]["calibration"]["nsamples"] == 2000
    # a refused run removes the directories it created
    code, _, stderr = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "other" / "out", "--data",
                          data_file("valid"), "--pattern", "2:5")
    assert code == 2 and not (tmp_path / "other").exists()


LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from sparsekit.files.atomic import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_two_runs_to_one_output(tiny_model_dir, tmp_path):
    """A second process writing the same -o fails at once with one line naming the first."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-m", "sparsekit", "prune", str(tiny_model_dir("llama")), "-o",
                                 str(out), "--method", "magnitude"], capture_output=True, text=True, env=env)
        one_line(second.returncode, second.stderr, f"output {out} is being written by another sparsekit run",
                 f"process {holder.pid}", "wait for it to finish or choose another -o")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale, and the next run takes it over
    second = subprocess.run([sys.executable, "-m", "sparsekit", "prune", str(tiny_model_dir("llama")), "-o",
                             str(out), "--method", "magnitude"], capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_what_a_killed_run_left_is_listed_and_removed_with_a_note(tiny_model_dir, cli, tmp_path):
    from sparsekit.files.atomic import temporary_path

    out = tmp_path / "out"
    leftover = temporary_path(out, "prune").with_suffix("")
    leftover = leftover.with_name(leftover.name.replace(f"-{os.getpid()}-", f"-{dead_pid()}-"))
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"x" * 3 * 2**20)
    code, stdout, stderr = cli("info", tiny_model_dir("llama"), "--json")
    assert code == 0 and "stale_temporaries" not in json.loads(stdout)  # another folder: nothing listed
    model_copy = tmp_path / "model"
    code, _, _ = cli("prune", tiny_model_dir("llama"), "-o", model_copy, "--method", "magnitude")
    code, stdout, stderr = cli("info", model_copy, "--json")
    assert json.loads(stdout)["stale_temporaries"] == [{"path": str(leftover), "bytes": 3 * 2**20}]
    assert f"note: {leftover} (3.0 MiB) was left by an interrupted run" in stderr
    code, _, stderr = cli("prune", tiny_model_dir("llama"), "-o", out, "--method", "magnitude")
    assert code == 0 and f"note: removed {leftover} (3.0 MiB), left by an interrupted run" in stderr
    assert not leftover.exists()


def test_summaries_say_what_they_mean(tiny_tokenizer, tiny_model_dir, cli, tmp_path):
    # info of a bf16 pruned directory: its stored dtype, its recipe
    src = tmp_path / "bf16"
    model = tiny_model("llama", dtype=torch.bfloat16)
    model.save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    assert cli("prune", src, "-o", tmp_path / "p", "--method", "magnitude", "--pattern", "2:4")[0] == 0
    code, stdout, _ = cli("info", tmp_path / "p", "--json")
    facts = json.loads(stdout)
    assert facts["dtype"] == "bfloat16" and facts["recipe"]["pattern"] == "2:4"
    code, stdout, _ = cli("info", tmp_path / "p")
    assert "bfloat16" in stdout and "Pruned by sparsekit: magnitude 2:4 @ 0.5" in stdout
    # --method none: the zeros were already there
    code, stdout, stderr = cli("prune", tmp_path / "p", "-o", tmp_path / "none", "--method", "none", "--activation",
                               "teal", "--data", data_file("valid"), "--nsamples", 2, "--seqlen", 16)
    assert code == 0, stderr
    assert "No weights pruned (the 50.00% zeros were already in the checkpoint)" in " ".join(stdout.split())
    # a compat export says how it loads
    code, _, stderr = cli("export", tmp_path / "p", "-o", tmp_path / "e", "--compressed-tensors-compat")
    assert code == 0 and "note: --compressed-tensors-compat: this export decodes correctly only with" in stderr
    # eval --compare: the quality cost, with the table not cut when piped
    code, stdout, stderr = cli("eval", tmp_path / "p", "--compare", src, "--data", data_file("test"), "--seqlen", 32,
                               "--max-windows", 2)
    assert code == 0, stderr
    assert "weight sparsity" in stdout and "Quality cost: perplexity" in stdout
    code, stdout, _ = cli("eval", tmp_path / "p", "--compare", src, "--data", data_file("test"), "--seqlen", 32,
                          "--max-windows", 2, "--json")
    doc = json.loads(stdout)
    assert doc["ppl_ratio"] == pytest.approx(doc["ppl"] / doc["baseline"]["ppl"])
    assert doc["baseline"]["model"] == str(src) and doc["baseline"]["weight_sparsity"] == 0.0


def test_progress_lines_when_piped(tiny_model_dir, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEKIT_PROGRESS", "lines")
    code, _, stderr = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "out", "--data", "self",
                          "--nsamples", 2, "--seqlen", 8)
    assert code == 0, stderr
    lines = stderr.splitlines()
    assert lines[0] == f"loading {tiny_model_dir('llama')} ..."
    assert "generating 2 x 8 calibration tokens with the model ..." in lines
    assert "wanda unstructured @ 0.5: pruning ..." in lines and len(lines) == len(set(lines))
    monkeypatch.setenv("SPARSEKIT_PROGRESS", "lines")
    code, stdout, stderr = cli("prune", tiny_model_dir("llama"), "-o", tmp_path / "o2", "--method", "magnitude",
                               "--json")
    assert code == 0 and stderr == ""  # --json: no progress at all
