"""End to end through the CLI: prune 2:4 -> export -> info / eval on the export."""

import json

import pytest

from conftest import data_file


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_prune_export_eval_round_trip(arch, tiny_model_dir, cli, tmp_path):
    pruned, exported = tmp_path / "pruned", tmp_path / "exported"
    code, _, _ = cli("prune", tiny_model_dir(arch), "-o", pruned, "--method", "wanda", "--pattern", "2:4",
                     "--data", data_file("valid"), "--nsamples", 4, "--seqlen", 32)
    assert code == 0
    code, stdout, _ = cli("export", pruned, "-o", exported, "--format", "sparse24", "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["linear_bytes"] < summary["linear_dense_bytes"]
    code, stdout, _ = cli("info", exported, "--json")
    assert code == 0
    info = json.loads(stdout)
    assert info["format"] == "sparse24" and info["sparsity"] == 0.5  # exact: half of every group
    assert info["recipe"]["method"] == "wanda"
    evaluate = ("--data", data_file("test"), "--seqlen", 32, "--max-windows", 3, "--json")
    _, dense_out, _ = cli("eval", pruned, *evaluate)
    code, sparse_out, _ = cli("eval", exported, *evaluate)
    assert code == 0
    dense, sparse = json.loads(dense_out), json.loads(sparse_out)
    assert sparse["ppl"] == pytest.approx(dense["ppl"], rel=1e-5)
    assert sparse["weight_sparsity"] == dense["weight_sparsity"] == 0.5


def test_export_refuses_non_24_and_bad_format(tiny_model_dir, cli, tmp_path):
    pruned = tmp_path / "pruned"
    code, _, _ = cli("prune", tiny_model_dir("llama"), "-o", pruned, "--method", "magnitude", "--sparsity", 0.5)
    assert code == 0
    code, _, err = cli("export", pruned, "-o", tmp_path / "e", "--format", "sparse24")
    assert code == 2
    assert "14 targeted layer(s) are not exactly 2:4" in err and "model.layers.0.mlp.down_proj" in err
    assert not (tmp_path / "e").exists()
    code, _, err = cli("export", pruned, "-o", tmp_path / "e", "--format", "zip")
    assert code == 2 and "unknown --format 'zip'" in err
    code, _, _ = cli("export", pruned, "-o", tmp_path / "b", "--format", "bitmask")
    assert code == 0


def test_export_output_safety_and_dense_summary(tiny_model_dir, cli, tmp_path, monkeypatch):
    pruned = tmp_path / "pruned"
    code, _, _ = cli("prune", tiny_model_dir("llama"), "-o", pruned, "--method", "magnitude",
                     "--pattern", "2:4")
    assert code == 0
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, _, err = cli("export", pruned, "-o", foreign, "--format", "dense")
    assert code == 2 and "already exists: choose another -o or pass --overwrite" in err
    code, _, err = cli("export", pruned, "-o", foreign, "--format", "dense", "--overwrite")
    assert code == 2 and "is not a sparsekit output" in err and "Traceback" not in err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for target in (".", ".."):
        code, _, err = cli("export", pruned, "-o", target, "--overwrite")
        assert code == 2 and "current directory" in err and "Traceback" not in err
        code, _, err = cli("prune", tiny_model_dir("llama"), "-o", target, "--overwrite",
                           "--method", "magnitude")
        assert code == 2 and "current directory" in err
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "pruned", "work"]

    code, stdout, _ = cli("export", pruned, "-o", tmp_path / "dense", "--format", "dense", "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["layers"] == 14 and summary["compressed_layers"] == 0  # 2 layers x 7 linears


def test_truncated_model_is_one_line(tiny_model_dir, cli, tmp_path):
    import shutil

    pruned = tmp_path / "pruned"
    assert cli("prune", tiny_model_dir("llama"), "-o", pruned, "--method", "magnitude",
               "--pattern", "2:4")[0] == 0
    code, _, _ = cli("export", pruned, "-o", tmp_path / "e")
    assert code == 0
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "e", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for args in (("info", broken), ("eval", broken, "--data", data_file("test"), "--seqlen", 16,
                                    "--max-windows", 1)):
        code, _, err = cli(*args)
        assert code == 2 and f"{weights}: damaged safetensors file (truncated" in err, err
        assert "Traceback" not in err
