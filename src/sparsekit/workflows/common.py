"""What the workflows share: option checks that need no model, loading with transformers kept
quiet, the calibration windows of a run, the progress callback, version facts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from sparsekit import loading
from sparsekit.anatomy import context_length
from sparsekit.data import calibration_windows, resolve_bos, with_bos
from sparsekit.dtypes import dtype_name
from sparsekit.errors import UsageError
from sparsekit.files.atomic import clean_stale, output_lock, stale_temporaries
from sparsekit.files.layout import check_safetensors
from sparsekit.loading import LoadedModel, check_model_spec, resolve_device, resolve_dtype
from sparsekit.pruning.pipeline import check_finite
from sparsekit.version import __version__

__all__ = ["Progress", "Stopwatch", "bos_id", "guarded_output", "calibration_ids", "calibration_settings", "check_finite_weights",
           "check_load_options", "check_model", "engine_placement", "load", "model_dtype", "notify",
           "resolve_seqlen", "versions"]

# progress(stage, done, total): a stage starts (done None) or advances (done of total; total None
# when unknown). Workflows call it and never print.
Progress = Callable[[str, "int | None", "int | None"], None]


def notify(progress: Progress | None, stage: str, done: int | None = None, total: int | None = None) -> None:
    if progress is not None:
        progress(stage, done, total)


class Stopwatch:
    """Seconds since it was made."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


@contextmanager
def guarded_output(out: str | Path | None, notes: list[str]) -> Iterator[None]:
    """Hold the output's lock for the run (a second run to the same output is refused at once);
    say so in ``notes`` when the output's parent directory is created and when temporaries that an
    interrupted run left are removed. None: no output, nothing to guard."""
    if out is None:
        yield
        return
    parent = Path(out).expanduser().absolute().parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    if created:
        notes.append(f"created the directory {parent} for the output")
    try:
        with output_lock(out):
            for path, size in stale_temporaries(out):
                notes.append(f"removed {path} ({size / 2**20:.1f} MiB), left by an interrupted run")
            clean_stale(out)
            yield
    except BaseException:
        for p in created:  # a failed run leaves no directory it made behind (innermost first)
            try:
                p.rmdir()
            except OSError:
                break
        raise


def check_load_options(dtype: str, device: str, offload: bool = False) -> str:
    """Validate dtype/device/offload without loading anything; returns the resolved device."""
    dev = resolve_device(device)
    resolve_dtype(dtype, dev)
    if offload and dev != "cuda":
        raise UsageError("--offload moves weights between CPU and GPU memory: it needs a GPU (--device cuda or auto)")
    return dev


def check_model(model: str | LoadedModel) -> None:
    """The model names something loadable, and a local directory's safetensors are intact:
    checked in milliseconds, before data preparation or loading."""
    if isinstance(model, LoadedModel):
        return
    if check_model_spec(str(model)) == "dir":
        check_safetensors(Path(model).expanduser())


def quiet_transformers() -> None:
    """sparsekit reports its own progress; keep transformers' bars and warnings out of the way."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()


def load(model: str | LoadedModel, *, progress: Progress | None = None, **kwargs) -> tuple[LoadedModel, float]:
    """`sparsekit.loading.load` (or the model already loaded), and the seconds it took."""
    if isinstance(model, LoadedModel):
        return model, 0.0
    quiet_transformers()
    watch = Stopwatch()
    kind = check_model_spec(str(model))
    notify(progress, f"loading {model}" + (" (a .gguf is converted once, ~1 min)" if kind in ("demo", "gguf") else ""))
    loaded = loading.load(model, **kwargs)
    return loaded, watch()


def model_dtype(model) -> str:
    return dtype_name(next(model.parameters()).dtype)


def resolve_seqlen(model, seqlen: int | None) -> int:
    ctx = context_length(model)
    seqlen = seqlen or min(ctx or 2048, 2048)
    if ctx is not None and seqlen > ctx:
        raise UsageError(f"--seqlen {seqlen} is longer than the model's context ({ctx}): use --seqlen {ctx} or less")
    return seqlen


def bos_id(loaded: LoadedModel, bos: str) -> int | None:
    """The BOS token id to put at the start of every window, or None (--bos resolved per model)."""
    if resolve_bos(bos, loaded.model.config.model_type, loaded.tokenizer):
        return loaded.tokenizer.bos_token_id
    return None


def engine_placement(device: str, offload: bool) -> tuple[str, str | None]:
    """(device to load the weights on, device each layer runs on)."""
    return ("cpu", "cuda") if offload else (device, None)


def calibration_ids(loaded: LoadedModel, cal, seqlen: int, bos: int | None,
                    progress: Progress | None = None, notes: list[str] | None = None) -> torch.Tensor:
    stage = (f"generating {cal.nsamples} x {seqlen} calibration tokens with the model" if cal.data == "self" else
             f"preparing {cal.nsamples} x {seqlen} calibration windows from {cal.data}")
    notify(progress, stage)
    ids = calibration_windows(loaded.tokenizer, cal.data, cal.nsamples, seqlen, cal.seed, cal.sampling,
                              model=loaded.model, progress=lambda done, total: notify(progress, stage, done, total),
                              note=None if notes is None else notes.append)
    return with_bos(ids, bos) if bos is not None and cal.data != "self" else ids


def calibration_settings(cal, seqlen: int, bos: int | None) -> dict:
    return {"data": cal.data, "nsamples": cal.nsamples, "seqlen": seqlen, "seed": cal.seed,
            "sampling": cal.sampling, "bos": "always" if bos is not None else "never"}


def check_finite_weights(targets) -> None:
    """Stop with a reason when a target's weights hold NaN or inf (never prune around them)."""
    for name, lin in targets.items():
        check_finite(name, "weights", lin.weight)


def versions() -> dict:
    import transformers

    return {"sparsekit": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
