"""The statistics file: streamed layer by layer, atomic, standard safetensors, read lazily, and
tied to the exact weights and calibration settings."""

from __future__ import annotations

import json
import os
import stat
import struct

import pytest
import torch

from conftest import tiny_model
from sparsekit.files import statsfile
from sparsekit.calibration.engine import run_sequential
from sparsekit.calibration.stats import InputStats
from sparsekit.files.statsfile import StatsWriter, check_settings, fingerprint, load_stats, weight_digest
from sparsekit.errors import UsageError
from sparsekit.anatomy import prunable_linears

SETTINGS = {"data": "x.txt", "nsamples": 3, "seqlen": 16, "sampling": "random", "seed": 0, "bos": "never"}
Q, K, V = (f"model.layers.0.self_attn.{p}_proj" for p in "qkv")
O = "model.layers.0.self_attn.o_proj"


def _ids(n=3, t=16):
    return torch.randint(3, 512, (n, t), generator=torch.Generator().manual_seed(0))


def _calibrate(model, path, hessian=True, stream=True):
    """What `sparsekit calibrate` does: the engine's per-layer statistics into the writer."""
    targets = prunable_linears(model)
    fp = fingerprint(model, targets)
    collected = {}
    with StatsWriter(path, fp, SETTINGS) as writer:
        def keep(index, linears, stats):
            stats = {n: s.to("cpu") for n, s in stats.items()}
            collected.update(stats)
            if stream:
                writer.add_layer(stats)
            return False

        run_sequential(model, _ids(), targets, keep, batch_size=2, hessian=hessian, modifies=False)
        if not stream:
            writer.add_layer(collected)
    return targets, fp, collected


def test_round_trip_is_exact_with_aliases(tmp_path):
    model = tiny_model("llama")
    path = tmp_path / "s.safetensors"
    targets, fp, ref = _calibrate(model, path)
    assert ref[Q] is ref[K] is ref[V] and ref[O] is not ref[Q]  # the engine shares q/k/v
    got, settings = load_stats(path, fp, list(targets), need_hessian=True)
    assert settings == SETTINGS and len(got) == len(targets) == 14
    for name in targets:
        a, b = ref[name].state_dict(), got[name].state_dict()
        assert a.keys() == b.keys() and "hessian" in a
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert got[Q] is got[K] is got[V]  # aliases come back as one object
    assert statsfile.read_header(path)["fingerprint"] == fp


def test_file_is_plain_safetensors(tmp_path):
    from safetensors.torch import load_file

    model = tiny_model("qwen3")
    path = tmp_path / "s.safetensors"
    targets, _, ref = _calibrate(model, path, hessian=False)
    tensors = load_file(str(path))
    owners = {n for n in targets if not n.endswith(("k_proj", "v_proj", "up_proj"))}
    assert {k.rsplit("/", 1)[0] for k in tensors} == owners
    for name in owners:
        assert torch.equal(tensors[f"{name}/sq_norm"], ref[name].sq_norm)
        assert f"{name}/hessian" not in tensors
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert raw[8:9] == b"{" and (8 + n) % 8 == 0
    meta = json.loads(json.loads(raw[8:8 + n])["__metadata__"]["sparsekit"])
    assert meta["aliases"][K] == Q and meta["version"] == 2


def test_streamed_equals_all_at_once_and_header_overflow_copy(tmp_path, monkeypatch):
    model = tiny_model("llama")
    _calibrate(model, tmp_path / "a.safetensors", stream=True)
    _calibrate(model, tmp_path / "b.safetensors", stream=False)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    # a header larger than the room reserved for it: the data is copied once behind it
    monkeypatch.setattr(statsfile, "_header_bound", lambda fp, settings: 64)
    targets, fp, ref = _calibrate(model, tmp_path / "c.safetensors")
    got, _ = load_stats(tmp_path / "c.safetensors", fp, list(targets))
    for name in targets:
        assert torch.equal(got[name].hessian, ref[name].hessian)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "c.safetensors"]


def test_load_is_lazy(tmp_path, monkeypatch):
    model = tiny_model("llama")
    path = tmp_path / "s.safetensors"
    targets, fp, _ = _calibrate(model, path)
    reads = []
    real = statsfile._read_tensors
    monkeypatch.setattr(statsfile, "_read_tensors", lambda p, keys: reads.append(sorted(keys)) or real(p, keys))
    got, _ = load_stats(path, fp, list(targets))
    assert reads == []
    got[K]
    assert reads == [sorted(f"{Q}/{k}" for k in ("version", "nsamples", "ntokens", "sq_norm", "mean", "m2",
                                                  "hessian"))]
    got[Q], got[V]
    assert len(reads) == 1  # same owner: read once
    got[O]
    assert len(reads) == 2 and reads[1][0].startswith(O + "/")
    assert got.get("not.a.layer") is None
    light = got.without_hessian()
    assert light[O].hessian is None and torch.equal(light[O].sq_norm, got[O].sq_norm)
    assert len(reads) == 3 and not any(k.endswith("/hessian") for k in reads[-1])


def test_state_view_is_the_state_dict():
    s = InputStats(6, hessian=True)
    s.update(torch.randn(2, 5, 6))
    view, full = s.state_view(), s.state_dict()
    assert view.keys() == full.keys()
    for k in full:
        assert torch.equal(view[k], full[k]), k


def test_fingerprint_tells_weights_and_dtype_apart(tmp_path):
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    path = tmp_path / "s.safetensors"
    targets, fp_a, _ = _calibrate(a, path, hessian=False)
    fp_b = fingerprint(b, prunable_linears(b))
    assert fp_a["linears"][Q]["shape"] == fp_b["linears"][Q]["shape"]
    assert fp_a["digest"] != fp_b["digest"]
    with pytest.raises(UsageError, match=rf"calibrated on different weights \({Q} differs\): recalibrate"):
        load_stats(path, fp_b, list(targets))
    # pruning changes the values: a pruned copy is refused too
    with torch.no_grad():
        targets[O].weight[:, ::2] = 0
    with pytest.raises(UsageError, match=rf"different weights \({O} differs\)"):
        load_stats(path, fingerprint(a, targets), list(targets))
    # the same values in another dtype: the dtype is named, with the fix
    c = tiny_model("llama", seed=0, dtype=torch.bfloat16)
    msg = (rf"--stats {path} was calibrated on float32 weights but this model's are bfloat16 \({Q}\): "
           "recalibrate, or load the model with --dtype float32")
    with pytest.raises(UsageError, match=msg):
        load_stats(path, fingerprint(c, prunable_linears(c)), list(targets))
    # the same weights, freshly built, load
    fresh = tiny_model("llama", seed=0)
    got, _ = load_stats(path, fingerprint(fresh, prunable_linears(fresh)), list(targets))
    assert len(got) == 14


def test_weight_digest_samples_values_dtype_and_shape():
    w = torch.randn(64, 200)
    assert weight_digest(w) == weight_digest(w.clone())
    assert weight_digest(w) != weight_digest(w.reshape(200, 64))
    assert weight_digest(w) != weight_digest(w.double())
    v = w.clone()
    v.view(-1)[statsfile.DIGEST_SAMPLES // 2 * w.numel() // statsfile.DIGEST_SAMPLES] += 1  # a sampled element
    assert weight_digest(v) != weight_digest(w)
    assert weight_digest(torch.empty(4, 4, device="meta")) is None


def test_check_settings_messages():
    check_settings({"bos": "never", "seqlen": 16}, {"bos": "never", "seqlen": 16})
    with pytest.raises(UsageError) as e:
        check_settings({"bos": "never"}, {"bos": "always"}, "X")
    assert str(e.value) == ("--stats X was calibrated with --bos never but this run uses --bos always: "
                            "recalibrate or pass --bos never")
    with pytest.raises(UsageError, match="--stats X does not record the --bos it was calibrated with"):
        check_settings({}, {"bos": "always"}, "X")


def _write_then_fail(path, fail_on, exc):
    """Write the statistics of a tiny model, failing at the `fail_on`-th tensor write."""
    model = tiny_model("llama")
    targets = prunable_linears(model)
    stats = {n: InputStats(lin.in_features) for n, lin in targets.items()}
    calls = []
    real = StatsWriter._write

    def flaky(self, key, tensor):
        calls.append(key)
        if len(calls) == fail_on:
            raise exc
        return real(self, key, tensor)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StatsWriter, "_write", flaky)
        with pytest.raises(type(exc)):
            with StatsWriter(path, fingerprint(model, targets), SETTINGS) as writer:
                writer.add_layer(stats)


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_write_is_atomic(tmp_path, exc):
    target = tmp_path / "s.safetensors"
    _write_then_fail(target, 5, exc)
    assert list(tmp_path.iterdir()) == []  # nothing, not even a temporary file
    target.write_bytes(b"previous")
    _write_then_fail(target, 5, exc)
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]


def test_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with StatsWriter(tmp_path / "s.safetensors", {"linears": {}}, {}) as writer:
            writer.add_layer({})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s.safetensors").stat().st_mode) == 0o644


def test_old_and_foreign_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    old = tmp_path / "v1.safetensors"
    save_file({"a/sq_norm": torch.ones(2)}, str(old),
              metadata={"sparsekit": json.dumps({"format": "sparsekit-stats", "version": 1})})
    with pytest.raises(UsageError, match=r"version-1 statistics file.*recalibrate with `sparsekit calibrate`"):
        load_stats(old, {}, ["a"])
    foreign = tmp_path / "other.safetensors"
    save_file({"x": torch.ones(2)}, str(foreign))
    with pytest.raises(UsageError, match="not a sparsekit statistics file"):
        load_stats(foreign, {}, ["x"])


def test_reading_never_maps_the_whole_file(tmp_path, monkeypatch):
    """A Llama-3-8B statistics file with Hessians is about 33 GB: mapping it whole to read one
    layer failed ("unable to mmap ... Cannot allocate memory") on a 24 GB machine. Reading uses
    seeks and reads only."""
    import safetensors

    model = tiny_model("llama")
    path = tmp_path / "s.safetensors"
    targets, fp, ref = _calibrate(model, path)

    def no_mmap(*a, **k):
        raise RuntimeError("unable to mmap: Cannot allocate memory")

    monkeypatch.setattr(safetensors, "safe_open", no_mmap)
    got, _ = load_stats(path, fp, list(targets), need_hessian=True)
    assert torch.equal(got[O].hessian, ref[O].hessian)


def test_truncated_statistics_file_is_one_line(tmp_path):
    model = tiny_model("llama")
    path = tmp_path / "s.safetensors"
    targets, fp, _ = _calibrate(model, path)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(UsageError, match="damaged statistics file .*truncated.*recalibrate"):
        load_stats(path, fp, list(targets))
