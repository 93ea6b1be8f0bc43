"""Safe outputs: checks before work, all-or-nothing replacement, modes, stale temporaries (SIGTERM
cleanup: tests/test_signals.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sparsekit.files import atomic
from sparsekit.files.atomic import atomic_directory, check_output, check_output_file, clean_stale
from sparsekit.errors import UsageError


def sparsekit_dir(path: Path, content: str = "old") -> Path:
    path.mkdir(parents=True)
    (path / "sparsekit.json").write_text("{}")
    (path / "weights.txt").write_text(content)
    return path


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    def set_(mask):
        os.umask(mask)
    old = os.umask(0o022)
    yield set_
    os.umask(old)


# --- atomic_directory ----------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_published_modes_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        assert mode(tmp) == 0o700  # private while being written
        save_file({"a": torch.zeros(2)}, str(tmp / "model.safetensors"))  # written 0600
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "x.json").write_text("{}")
        os.chmod(tmp / "sub" / "x.json", 0o600)
    assert mode(out) == mode(out / "sub") == 0o777 & ~mask
    assert mode(out / "model.safetensors") == mode(out / "sub" / "x.json") == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_mid_save_keeps_the_old_output(tmp_path):
    out = sparsekit_dir(tmp_path / "out")
    before = tree(out)
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(out) as tmp:
            (tmp / "weights.txt").write_text("new, half written")
            raise RuntimeError("disk full")
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_success_replaces_the_old_output_whole(tmp_path):
    out = sparsekit_dir(tmp_path / "out")
    (out / "stale-shard.safetensors").write_text("x")
    with atomic_directory(out) as tmp:
        (tmp / "weights.txt").write_text("new")
    assert tree(out) == {"weights.txt": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_final_rename_puts_the_old_output_back(tmp_path, monkeypatch):
    out = sparsekit_dir(tmp_path / "out")
    before = tree(out)
    real, calls = os.replace, []

    def flaky(a, b):
        calls.append((Path(a).name, Path(b).name))
        if len(calls) == 2:  # 1: old output aside, 2: new output into place
            raise OSError(5, "Input/output error")
        return real(a, b)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="Input/output error"):
        with atomic_directory(out) as tmp:
            (tmp / "weights.txt").write_text("new")
    assert len(calls) == 3 and calls[2] == ("previous", "out")
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_current_directory_is_refused_before_anything_is_created(tmp_path, monkeypatch):
    work = tmp_path / "a" / "work"
    work.mkdir(parents=True)
    (work / "sparsekit.json").write_text("{}")
    monkeypatch.chdir(work)
    for given, what in ((".", "the current directory"), ("..", "a parent of the current"),
                        (str(tmp_path), "a parent of the current")):
        with pytest.raises(UsageError, match=f"output {given} is {what}"):
            check_output(given, overwrite=True)
        with pytest.raises(UsageError, match=f"output {given} is {what}"):
            with atomic_directory(given):
                pass
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["work"]
    assert sorted(p.name for p in work.iterdir()) == ["sparsekit.json"]
    assert check_output("sub", overwrite=False) == Path("sub")  # below the cwd is fine


# --- check_output / check_output_file ------------------------------------------------------

def test_check_output_rules(tmp_path):
    check_output(tmp_path / "new" / "deeper", overwrite=False)  # nothing is created
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", overwrite=False)
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(UsageError, match="already exists: choose another -o or pass --overwrite"):
        check_output(foreign, overwrite=False)
    with pytest.raises(UsageError, match=r"not a sparsekit output \(no sparsekit.json\)"):
        check_output(foreign, overwrite=True)
    ours = sparsekit_dir(tmp_path / "pruned")
    with pytest.raises(UsageError, match="already exists"):
        check_output(ours, overwrite=False)
    check_output(ours, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file: give a directory path"):
        check_output(tmp_path / "file", overwrite=True)
    with pytest.raises(UsageError, match=f"cannot create output .*: {tmp_path / 'file'} is a file"):
        check_output(tmp_path / "file" / "out", overwrite=False)
    with pytest.raises(UsageError, match="overlaps the input"):
        check_output(tmp_path, overwrite=True, inputs=[ours])
    with pytest.raises(UsageError, match="overlaps the input"):
        check_output(ours / "inside", overwrite=False, inputs=[ours])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "home", "pruned"]


def test_unwritable_location_is_found_early(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", refuse)
    with pytest.raises(UsageError, match=f"cannot write output .*: {tmp_path} is not writable "
                                         r"\(Permission denied\): choose another location"):
        check_output(tmp_path / "out", overwrite=False)
    with pytest.raises(UsageError, match="is not writable"):
        check_output_file(tmp_path / "stats.safetensors", overwrite=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(UsageError, match="is not writable"):
        check_output(ro / "out", overwrite=False)


def test_check_output_file_rules(tmp_path):
    stats = tmp_path / "stats.safetensors"
    save_file({"a": torch.zeros(1)}, str(stats),
              metadata={"sparsekit": json.dumps({"format": "sparsekit-stats", "version": 1})})
    check_output_file(tmp_path / "new.safetensors", overwrite=False)
    with pytest.raises(UsageError, match="already exists: choose another -o or pass --overwrite"):
        check_output_file(stats, overwrite=False)
    check_output_file(stats, overwrite=True)
    model = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(1)}, str(model),
              metadata={"sparsekit": json.dumps({"export_format": "sparse24"})})
    (tmp_path / "notes.txt").write_text("x")
    for other in (model, tmp_path / "notes.txt"):
        with pytest.raises(UsageError, match="not a sparsekit statistics file, so --overwrite"):
            check_output_file(other, overwrite=True)
    with pytest.raises(UsageError, match="is a directory: give a file path"):
        check_output_file(tmp_path, overwrite=True)


# --- stale temporaries ---------------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    out = tmp_path / "model"
    host = atomic._host_tag()
    dead, alive = dead_pid(), os.getppid()
    names = {
        "dead": f".model.sparsekit-partial-{dead}-{host}-abc123_x",
        "dead_file": f".model.sparsekit-file-{dead}-{host}-q1w2e3r4.tmp",
        "alive": f".model.sparsekit-export-{alive}-{host}-abc123_x",
        "other_host": f".model.sparsekit-partial-{dead}-0badc0de-abc123_x",
        "other_output": f".model2.sparsekit-partial-{dead}-{host}-abc123_x",
        "old_holder": f".model.sparsekit-old-{dead}-{host}-abc123_x",
        "not_ours": ".model.partial-abc123",
    }
    for key, name in names.items():
        if key == "dead_file":
            (tmp_path / name).write_text("x")
        else:
            (tmp_path / name).mkdir()
            (tmp_path / name / "big.bin").write_bytes(b"\0" * 1000)
    # the holder of a previous output is kept while the output itself is missing
    removed = clean_stale(out)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["dead_file"]])
    with atomic_directory(out) as tmp:  # a run for the same output cleans too
        (tmp / "x").write_text("x")
    assert (tmp_path / names["old_holder"]).exists()  # cleaned before "model" existed
    assert [p.name for p in clean_stale(out)] == [names["old_holder"]]  # now it does
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([names["alive"], names["other_host"], names["other_output"],
                           names["not_ours"], "model"])


def test_own_pid_temporary_is_stale_unless_in_use(tmp_path):
    out = tmp_path / "model"
    leftover = tmp_path / f".model.sparsekit-partial-{os.getpid()}-{atomic._host_tag()}-zz"
    leftover.mkdir()  # a previous process that had this pid
    with atomic_directory(out) as tmp:
        assert not leftover.exists()
        assert clean_stale(out) == [] and tmp.exists()  # the live one is never touched
