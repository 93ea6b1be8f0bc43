"""Per-linear-layer input statistics accumulated over calibration data.

`InputStats` is a small, pure-tensor accumulator: the hook glue calls
`update(x)` with each input batch of one linear layer, and the pruning math
reads the results. Everything is kept in fp32 on one device.

Conventions (N = sequences seen, tokens pooled over all sequences):

* ``sq_norm[j]  = sum_{n,t} x_{n,t,j}^2 / N``  (Wanda's s_j; a running mean over
  sequences of the per-sequence sum over tokens, as in the Wanda reference).
* ``mean[j]``, ``var[j]``: per-channel mean and population variance over tokens
  (Chan/Welford merge of per-batch moments, so fp32 stays accurate).
* ``hessian = (2 / N) * X X^T``  (SparseGPT's H, a running mean over sequences).

A 3-D or higher input ``[..., T, d]`` counts ``prod(shape[:-2])`` sequences; a
1-D or 2-D input counts as one sequence. Inputs with zero tokens are ignored.

Extending: a new statistic is one more tensor in the state plus a few lines in
`update`, `merge`, `state_dict` and `from_state_dict`; unknown keys in a saved
state are ignored so older code can read newer files.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch

__all__ = ["FORMAT_VERSION", "InputStats", "fp32_matmul_precision", "ieee_fp32_matmul", "tf32_is_exact"]

FORMAT_VERSION = 1


@contextlib.contextmanager
def fp32_matmul_precision(device: torch.device | str | None, tf32: bool) -> Iterator[None]:
    """Temporarily set whether CUDA fp32 matmuls may use TF32; restores the setting after.

    A no-op off CUDA or when the setting already matches. It uses the legacy
    ``allow_tf32`` flag unless the process already uses the new
    ``fp32_precision`` API (mixing the two raises in recent PyTorch).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cuda":
        yield
        return
    mm = torch.backends.cuda.matmul
    try:
        legacy = True
        old = mm.allow_tf32
        want = bool(tf32)
    except RuntimeError:  # the process already uses the new API
        legacy = False
        old = getattr(mm, "fp32_precision", "ieee")
        want = "tf32" if tf32 else "ieee"
    if old == want or (not tf32 and old in (False, "ieee", "none")):
        yield
        return
    try:
        if legacy:
            mm.allow_tf32 = want
        else:
            mm.fp32_precision = want
        yield
    finally:
        if legacy:
            mm.allow_tf32 = old
        else:
            mm.fp32_precision = old


def ieee_fp32_matmul(device: torch.device | str | None):
    """Context: CUDA fp32 matmuls without TF32 (full fp32 products)."""
    return fp32_matmul_precision(device, tf32=False)


def tf32_is_exact(dtype: torch.dtype) -> bool:
    """TF32 keeps 10 mantissa bits and fp32's exponent range: every fp16 and bf16 value is
    exact in it, so X^T X of 16-bit activations (upcast to fp32) loses nothing on TF32
    tensor cores: the products are exact and summed in fp32."""
    return dtype in (torch.float16, torch.bfloat16)


class InputStats:
    """Per-linear-layer input statistics accumulated over calibration tokens, fp32.

    Args:
        in_features: size of the last input dimension.
        hessian: also accumulate SparseGPT's ``(2/N) X X^T`` (in_features^2 floats).
        device: where the state lives. If None, the state follows the device of
            the first non-empty `update` (CPU until then).

    The properties return the live state tensors (no copies); treat them as
    read-only.
    """

    def __init__(self, in_features: int, hessian: bool = False, device=None):
        if int(in_features) <= 0:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.in_features = int(in_features)
        self._pinned = device is not None
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.nsamples = 0
        self.ntokens = 0
        zeros = lambda *s: torch.zeros(*s, dtype=torch.float32, device=dev)  # noqa: E731
        self._sq_norm = zeros(self.in_features)
        self._mean = zeros(self.in_features)
        self._m2 = zeros(self.in_features)  # sum over tokens of (x - mean)^2
        self._hessian = zeros(self.in_features, self.in_features) if hessian else None

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        return self._sq_norm.device

    def to(self, device) -> "InputStats":
        """Move the state to `device` (in place; returns self)."""
        dev = torch.device(device)
        self._sq_norm = self._sq_norm.to(dev)
        self._mean = self._mean.to(dev)
        self._m2 = self._m2.to(dev)
        if self._hessian is not None:
            self._hessian = self._hessian.to(dev)
        return self

    @property
    def sq_norm(self) -> torch.Tensor:
        """Wanda's s_j = ||X_j||^2 / nsamples, shape [in_features]."""
        return self._sq_norm

    @property
    def mean(self) -> torch.Tensor:
        """Per-channel mean over all tokens, shape [in_features] (zeros if empty)."""
        return self._mean

    @property
    def var(self) -> torch.Tensor:
        """Per-channel population variance over all tokens (divisor ntokens)."""
        if self.ntokens == 0:
            return torch.zeros_like(self._m2)
        return (self._m2 / self.ntokens).clamp_min_(0.0)

    @property
    def hessian(self) -> torch.Tensor | None:
        """SparseGPT's H = (2 / nsamples) X X^T, [in, in]; None unless requested."""
        return self._hessian

    # ----------------------------------------------------------- accumulation
    def update(self, x: torch.Tensor, nseq: int | None = None) -> None:
        """Add one batch of layer inputs ``x: [..., in_features]`` (any float dtype).

        `nseq`: how many sequences the batch holds, when the caller knows better than the
        shape (a layer that flattens [batch, tokens, d] to [batch * tokens, d] before a linear).
        """
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"InputStats expects inputs with last dim {self.in_features}, got shape {tuple(x.shape)}"
            )
        if nseq is None:
            nseq = math.prod(x.shape[:-2]) if x.dim() >= 3 else 1
        x2 = x.detach().reshape(-1, self.in_features)
        btok = x2.shape[0]
        if btok == 0:
            return
        if not self._pinned and self.nsamples == 0 and x2.device != self.device:
            self.to(x2.device)
        xf = x2.to(device=self.device, dtype=torch.float32)

        n, tot = self.nsamples, self.nsamples + nseq
        bsq = torch.linalg.vector_norm(xf, ord=2, dim=0).square_()
        self._sq_norm.mul_(n / tot).add_(bsq, alpha=1.0 / tot)

        bvar, bmean = torch.var_mean(xf, dim=0, correction=0)
        self._merge_moments(bmean, bvar.mul_(btok), btok)

        if self._hessian is not None:
            # 16-bit inputs are exact in TF32: several times the fp32 matmul speed on a GPU
            with fp32_matmul_precision(self.device, tf32=tf32_is_exact(x.dtype)):
                self._hessian.mul_(n / tot).addmm_(xf.T, xf, alpha=2.0 / tot)
        self.nsamples = tot

    def _merge_moments(self, bmean: torch.Tensor, bm2: torch.Tensor, btok: int) -> None:
        """Chan et al. parallel merge of (mean, M2) with a batch of `btok` tokens."""
        na, ntot = self.ntokens, self.ntokens + btok
        delta = bmean - self._mean
        self._mean.add_(delta, alpha=btok / ntot)
        self._m2.add_(bm2).add_(delta.square_(), alpha=na * btok / ntot)
        self.ntokens = ntot

    def merge(self, other: "InputStats") -> None:
        """Fold `other` (e.g. another shard) into self; same result as one pass over both."""
        if not isinstance(other, InputStats) or other.in_features != self.in_features:
            raise ValueError("merge needs an InputStats with the same in_features")
        if (self._hessian is None) != (other._hessian is None):
            raise ValueError("merge needs both accumulators with or without a hessian")
        if other.nsamples == 0 and other.ntokens == 0:
            return
        if not self._pinned and self.nsamples == 0 and self.ntokens == 0:
            self.to(other.device)
        dev = self.device
        n, tot = self.nsamples, self.nsamples + other.nsamples
        if tot > 0:
            self._sq_norm.mul_(n / tot).add_(other._sq_norm.to(dev), alpha=other.nsamples / tot)
            if self._hessian is not None:
                self._hessian.mul_(n / tot).add_(other._hessian.to(dev), alpha=other.nsamples / tot)
        self._merge_moments(other._mean.to(dev), other._m2.to(dev), other.ntokens)
        self.nsamples = tot

    # --------------------------------------------------------- serialization
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors (safetensors-friendly): version, nsamples, ntokens,
        sq_norm, mean, m2 and, if accumulated, hessian (copies)."""
        return {k: t.clone() for k, t in self.state_view().items()}

    def state_view(self) -> dict[str, torch.Tensor]:
        """`state_dict` without copying the large tensors (the live state: for a writer that
        only reads them)."""
        d = {
            "version": torch.tensor([FORMAT_VERSION], dtype=torch.int64),
            "nsamples": torch.tensor([self.nsamples], dtype=torch.int64),
            "ntokens": torch.tensor([self.ntokens], dtype=torch.int64),
            "sq_norm": self._sq_norm,
            "mean": self._mean,
            "m2": self._m2,
        }
        if self._hessian is not None:
            d["hessian"] = self._hessian
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor], device=None) -> "InputStats":
        """Rebuild from `state_dict()` output; unknown keys are ignored. A Hessian that is
        already fp32 on the target device is adopted, not copied (a Llama-3-8B down_proj
        Hessian is 0.8 GB): the caller hands it over."""
        missing = [k for k in ("nsamples", "ntokens", "sq_norm", "mean", "m2") if k not in d]
        if missing:
            raise ValueError(f"InputStats state is missing keys: {', '.join(missing)}")
        version = int(d["version"].reshape(-1)[0]) if "version" in d else FORMAT_VERSION
        if version > FORMAT_VERSION:
            raise ValueError(f"InputStats state has format version {version}; this sparsekit reads <= {FORMAT_VERSION}")
        sq = d["sq_norm"]
        dim = sq.numel()
        dev = device if device is not None else sq.device
        h = d.get("hessian")
        for k in ("mean", "m2"):
            if d[k].numel() != dim:
                raise ValueError(f"InputStats state: '{k}' has {d[k].numel()} entries, sq_norm has {dim}")
        if h is not None and tuple(h.shape) != (dim, dim):
            raise ValueError(f"InputStats state: hessian shape {tuple(h.shape)} != ({dim}, {dim})")
        s = cls(dim, hessian=False, device=dev)
        s._pinned = device is not None
        s.nsamples = int(d["nsamples"].reshape(-1)[0])
        s.ntokens = int(d["ntokens"].reshape(-1)[0])
        s._sq_norm.copy_(sq.reshape(-1))
        s._mean.copy_(d["mean"].reshape(-1))
        s._m2.copy_(d["m2"].reshape(-1))
        if h is not None:
            s._hessian = h.to(device=s.device, dtype=torch.float32).contiguous()
        return s

    def __repr__(self) -> str:
        return (
            f"InputStats(in_features={self.in_features}, nsamples={self.nsamples}, "
            f"ntokens={self.ntokens}, hessian={self._hessian is not None}, device={self.device})"
        )
