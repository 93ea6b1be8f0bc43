"""`sparsekit eval` as a library call: perplexity with the SparseGPT/Wanda protocol, the weight
sparsity the model actually has, and, for a model with activation thresholds, the fraction of
inputs they zeroed during the evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparsekit.data import BOS_MODES, check_data_request, eval_tokens, windows, with_bos
from sparsekit.errors import UsageError
from sparsekit.files.meta import read_meta
from sparsekit.eval.perplexity import PerplexityResult, perplexity
from sparsekit.eval.sparsity import SparsityReport, weight_sparsity
from sparsekit.loading import LOAD_ACTIVATION, LoadedModel
from sparsekit.recipe import check_choice, check_seqlen
from sparsekit.runtime.act_sparse import ACT_MODES, activation_sparsity_report, count_activation
from sparsekit.workflows.common import (Progress, bos_id, check_load_options, check_model, load, model_dtype,
                                        notify, resolve_seqlen)

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    model: str
    data: str
    seqlen: int
    bos: str                      # what was used: always | never
    bos_option: str               # what was asked for
    result: PerplexityResult
    sparsity: SparsityReport
    load_seconds: float
    dtype: str
    activation: dict | None       # measured zeroed share per layer type (None without thresholds)
    activation_method: str | None
    baseline: "EvalResult | None" = None   # the same evaluation of another model (--compare)

    @property
    def ppl(self) -> float:
        return self.result.ppl

    def to_json(self) -> dict:
        r = self.result
        return {"model": self.model, "data": self.data, "seqlen": self.seqlen, "bos": self.bos,
                "bos_option": self.bos_option, "windows": r.windows, "tokens": r.tokens, "ppl": r.ppl, "nll": r.nll,
                "weight_sparsity": self.sparsity.overall, "sparsity_by_type": self.sparsity.by_kind(),
                "seconds": round(r.seconds, 3), "load_seconds": round(self.load_seconds, 3), "dtype": self.dtype,
                "activation_sparsity": self.activation, "activation_method": self.activation_method,
                **({"baseline": self.baseline.to_json(), "ppl_ratio": self.ppl / self.baseline.ppl}
                   if self.baseline is not None else {})}


DEFAULT_EVAL_DATA = "wikitext2"


def _check_thresholds_saved(model: str | LoadedModel, act_mode: str) -> None:
    """``--act-mode all|decode`` asks for activation sparsity: the model must have thresholds."""
    meta = model.meta if isinstance(model, LoadedModel) else (
        read_meta(Path(model).expanduser()) if Path(model).expanduser().is_dir() else None)
    if not (meta or {}).get("activation"):
        raise UsageError(f"--act-mode {act_mode}: {getattr(model, 'source', model)} has no activation-sparsity "
                         "thresholds (its sparsekit.json has no activation section): prune it with --activation, "
                         "or drop --act-mode")


def evaluate(model: str | LoadedModel, data: str | None = None, *, seqlen: int | None = None,
             max_windows: int | None = None, batch_size: int = 1, bos: str = "auto", act_mode: str = "auto",
             dtype: str = "auto", device: str = "auto", offload: bool = False, trust_remote_code: bool = False,
             baseline: str | LoadedModel | None = None, progress: Progress | None = None) -> EvalResult:
    """Perplexity of ``model`` on ``data`` (a named dataset with its reference protocol, or a local
    file; default wikitext2), plus its measured weight sparsity.

    The text is tokenized once, cut into non-overlapping windows of ``seqlen`` tokens (remainder
    dropped), and each window is scored alone (its first token is not predicted):
    ppl = exp(mean token NLL). ``bos`` always puts BOS in place of each window's (unscored) first
    token. ``act_mode``: activation sparsity saved with the model as recorded (auto), on every
    token (all), on one-token steps only (decode: evaluation windows are prefill, so they stay
    dense) or off. ``baseline``: another model (e.g. the dense one) evaluated the same way first,
    so the result says what pruning cost (``ppl_ratio``)."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if max_windows is not None and max_windows < 1:
        raise UsageError(f"--max-windows must be at least 1, got {max_windows}")
    check_seqlen(seqlen)
    check_choice("--bos", bos, BOS_MODES)
    check_choice("--act-mode", act_mode, LOAD_ACTIVATION)
    check_load_options(dtype, device, offload)
    check_model(model)
    if baseline is not None:
        check_model(baseline)
    if act_mode in ACT_MODES:
        _check_thresholds_saved(model, act_mode)
    default = data is None
    data = DEFAULT_EVAL_DATA if default else data
    check_data_request(data, "test", why="eval" if default else None)
    base = None
    if baseline is not None:
        base = evaluate(baseline, data, seqlen=seqlen, max_windows=max_windows, batch_size=batch_size, bos=bos,
                        act_mode="auto", dtype=dtype, device=device, offload=offload,
                        trust_remote_code=trust_remote_code, progress=progress)
        seqlen = base.seqlen
    loaded, load_s = load(model, progress=progress, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                          offload=offload, activation=act_mode)
    count_activation(loaded.model)  # the measured shares beside the perplexity
    seqlen = resolve_seqlen(loaded.model, seqlen)
    bos_token = bos_id(loaded, bos)
    wins = windows(eval_tokens(loaded.tokenizer, data, seqlen), seqlen, max_windows)
    if bos_token is not None:
        wins = with_bos(wins, bos_token)
    stage = f"perplexity ({wins.shape[0]} x {seqlen})"
    notify(progress, stage, 0, wins.shape[0])
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        notify(progress, stage, done, wins.shape[0])

    result = perplexity(loaded.model, wins, batch_size, on_batch=on_batch)
    act = activation_sparsity_report(loaded.model) or None
    method = ((loaded.meta or {}).get("activation") or {}).get("method") if act else None
    return EvalResult(str(loaded.source), data, seqlen, "always" if bos_token is not None else "never", bos, result,
                      weight_sparsity(loaded.model), load_s, model_dtype(loaded.model), act, method, base)
