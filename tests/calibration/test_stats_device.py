"""InputStats device placement and the TF32 guard, tested on the CPU.

A second device is emulated with PyTorch's "meta" device (tensors with a device and a shape
but no data), so device following is checked without a GPU. The TF32 guard is checked with
stand-ins for ``torch.backends.cuda.matmul`` (both the legacy ``allow_tf32`` flag and the
newer ``fp32_precision`` setting) and once with the real legacy flag.
"""

from __future__ import annotations

import pytest
import torch

from sparsekit.calibration import stats as stats_mod
from sparsekit.calibration.stats import InputStats, fp32_matmul_precision, ieee_fp32_matmul, tf32_is_exact

D = 8


def _x(device="cpu", nseq=2):
    return torch.randn(nseq, 5, D, generator=torch.Generator().manual_seed(0)).to(device)


def _devices(s: InputStats) -> set[str]:
    tensors = [s.sq_norm, s.mean, s.var] + ([s.hessian] if s.hessian is not None else [])
    return {t.device.type for t in tensors}


# ---------------------------------------------------------------- device following
def test_state_follows_the_first_update_unless_pinned():
    s = InputStats(D, hessian=True)
    assert s.device.type == "cpu"
    s.update(_x("meta"))
    assert s.device.type == "meta" and _devices(s) == {"meta"} and s.nsamples == 2
    s.update(_x("cpu"))  # later inputs are moved to the state's device
    assert s.device.type == "meta" and s.nsamples == 4 and s.ntokens == 20

    pinned = InputStats(D, hessian=True, device="meta")
    pinned.update(_x("cpu"))
    assert pinned.device.type == "meta" and _devices(pinned) == {"meta"}

    on_cpu = InputStats(D, device="cpu")
    with pytest.raises(NotImplementedError):  # a pinned CPU state really copies (meta has no data)
        on_cpu.update(_x("meta"))


def test_empty_update_does_not_move_the_state():
    s = InputStats(D)
    s.update(torch.empty(0, D, device="meta"))
    assert s.device.type == "cpu" and s.nsamples == 0


def test_to_moves_every_tensor_and_returns_self():
    s = InputStats(D, hessian=True)
    s.update(_x())
    h = s.hessian.clone()
    assert s.to(torch.device("cpu")) is s and torch.equal(s.hessian, h)
    assert s.to("meta") is s
    assert _devices(s) == {"meta"} and s.nsamples == 2 and s.device.type == "meta"
    s.update(_x("cpu"))  # the moved state keeps accumulating where it now lives
    assert s.hessian.device.type == "meta" and s.nsamples == 4


def test_from_state_dict_device_pins_the_state():
    src = InputStats(D, hessian=True)
    src.update(_x())
    state = src.state_dict()
    moved = InputStats.from_state_dict(state, device="meta")
    assert _devices(moved) == {"meta"} and moved.nsamples == 2
    moved.update(_x("cpu"))  # pinned: stays on meta
    assert moved.device.type == "meta"
    same = InputStats.from_state_dict(state)
    assert _devices(same) == {"cpu"}
    torch.testing.assert_close(same.hessian, src.hessian)
    # Not pinned: an empty restored state follows its first update, like a fresh one.
    empty = InputStats.from_state_dict(InputStats(D).state_dict())
    empty.update(_x("meta"))
    assert empty.device.type == "meta"


# ---------------------------------------------------------------- TF32 guard
class _Legacy:
    """Stand-in for torch.backends.cuda.matmul with the legacy allow_tf32 flag."""

    def __init__(self, allow):
        object.__setattr__(self, "writes", [])
        object.__setattr__(self, "allow_tf32", allow)

    def __setattr__(self, name, value):
        self.writes.append((name, value))
        object.__setattr__(self, name, value)


class _NewApi:
    """Stand-in for a process that already uses fp32_precision: reading allow_tf32 raises."""

    def __init__(self, precision):
        object.__setattr__(self, "writes", [])
        object.__setattr__(self, "fp32_precision", precision)

    @property
    def allow_tf32(self):
        raise RuntimeError("mixing the legacy and new TF32 APIs is not allowed")

    def __setattr__(self, name, value):
        if name == "allow_tf32":
            raise RuntimeError("mixing the legacy and new TF32 APIs is not allowed")
        self.writes.append((name, value))
        object.__setattr__(self, name, value)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_legacy_flag_set_inside_and_restored(monkeypatch, device):
    mm = _Legacy(True)
    monkeypatch.setattr(torch.backends.cuda, "matmul", mm)
    with ieee_fp32_matmul(device):
        assert mm.allow_tf32 is False
    assert mm.allow_tf32 is True
    mm2 = _Legacy(False)
    monkeypatch.setattr(torch.backends.cuda, "matmul", mm2)
    with fp32_matmul_precision(device, tf32=True):
        assert mm2.allow_tf32 is True
    assert mm2.allow_tf32 is False


def test_legacy_flag_restored_after_an_exception(monkeypatch):
    mm = _Legacy(True)
    monkeypatch.setattr(torch.backends.cuda, "matmul", mm)
    with pytest.raises(KeyError):
        with ieee_fp32_matmul("cuda"):
            assert mm.allow_tf32 is False
            raise KeyError("boom")
    assert mm.allow_tf32 is True


def test_no_write_when_the_setting_already_matches(monkeypatch):
    mm = _Legacy(False)
    monkeypatch.setattr(torch.backends.cuda, "matmul", mm)
    with ieee_fp32_matmul("cuda"):
        assert mm.allow_tf32 is False
    with fp32_matmul_precision("cuda", tf32=False):
        pass
    assert mm.writes == []


@pytest.mark.parametrize("device", [None, "cpu", torch.device("cpu"), "meta"])
def test_noop_off_cuda(monkeypatch, device):
    mm = _Legacy(True)
    monkeypatch.setattr(torch.backends.cuda, "matmul", mm)
    with ieee_fp32_matmul(device):
        assert mm.allow_tf32 is True
    with fp32_matmul_precision(device, tf32=False):
        assert mm.allow_tf32 is True
    assert mm.writes == []


def test_new_api_precision_set_inside_and_restored(monkeypatch):
    mm = _NewApi("tf32")
    monkeypatch.setattr(torch.backends.cuda, "matmul", mm)
    with ieee_fp32_matmul("cuda"):
        assert mm.fp32_precision == "ieee"
    assert mm.fp32_precision == "tf32"
    assert mm.writes == [("fp32_precision", "ieee"), ("fp32_precision", "tf32")]
    mm = _NewApi("ieee")
    monkeypatch.setattr(torch.backends.cuda, "matmul", mm)
    with fp32_matmul_precision("cuda", tf32=True):
        assert mm.fp32_precision == "tf32"
    assert mm.fp32_precision == "ieee"


@pytest.mark.parametrize("precision", ["ieee", "none"])
def test_new_api_already_exact_is_left_alone(monkeypatch, precision):
    mm = _NewApi(precision)
    monkeypatch.setattr(torch.backends.cuda, "matmul", mm)
    with ieee_fp32_matmul("cuda"):
        assert mm.fp32_precision == precision
    assert mm.writes == []


def test_real_legacy_flag_round_trip():
    mm = torch.backends.cuda.matmul
    old = mm.allow_tf32
    try:
        mm.allow_tf32 = True
        with ieee_fp32_matmul("cuda"):
            assert mm.allow_tf32 is False
        assert mm.allow_tf32 is True
        with ieee_fp32_matmul("cpu"):
            assert mm.allow_tf32 is True
    finally:
        mm.allow_tf32 = old


def test_hessian_update_uses_tf32_only_for_16_bit_inputs(monkeypatch):
    seen = []
    real = stats_mod.fp32_matmul_precision

    def spy(device, tf32):
        seen.append((torch.device(device).type, tf32))
        return real(device, tf32)

    monkeypatch.setattr(stats_mod, "fp32_matmul_precision", spy)
    s = InputStats(D, hessian=True)
    s.update(_x())
    s.update(_x().to(torch.bfloat16))
    s.update(_x().to(torch.float16))
    assert seen == [("cpu", False), ("cpu", True), ("cpu", True)]
    assert tf32_is_exact(torch.bfloat16) and tf32_is_exact(torch.float16)
    assert not tf32_is_exact(torch.float32) and not tf32_is_exact(torch.float64)
