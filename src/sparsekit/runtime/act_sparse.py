"""Dynamic activation sparsity at run time: a wrapper that zeroes low-importance activations per
token, and an installer that swaps it in by module name (the model class never knows).

Rule (one token = one row of the last dimension)::

    importance_i = |x_i| * scale_i          (scale_i = 1 without a scale; float32 arithmetic)
    keep_i       = importance_i > threshold_i      (strict; threshold scalar or per channel)
    x_i          <- x_i if keep_i else 0

* TEAL: scalar threshold, no scale. WINA: scalar tau, scale = the column norms of the wrapped
  linear. CHESS: per-channel thresholds on the FFN activation output, or a scalar on q/o inputs.
* ``where="input"`` masks the wrapped module's input (a linear: nn.Linear, a 2:4 linear, any
  module with ``forward(x)``); ``where="output"`` masks its output (CHESS on the gate activation
  module ``act_fn``, whose zeros become zero inputs of down_proj).

Modes:

* ``"all"``: every token is sparsified (prefill and decode), what perplexity evals measure.
* ``"decode"``: only decode steps are: a call is sparsified iff the decoder layer it runs in was
  called with one position per sequence (``hidden_states.shape[-2] == 1``; batched decode with
  B sequences of one new token each is sparsified, each token with its own mask). Prefill,
  chunked prefill and speculative verification (several positions per sequence) stay dense.
  The installer records the positions with a forward pre-hook on each decoder layer; a wrapper
  used outside an installed model falls back to the input's shape (dim -2 for 3-D or more;
  the row count for 2-D inputs; 1-D is one token).

Compute. An input site around a plain ``nn.Linear`` whose call is sparsified goes through one
custom op, ``sparsekit::act_sparse_linear`` (opaque to ``torch.compile``, captured whole by a
CUDA graph), whose path is chosen per call by :mod:`sparsekit.runtime.act_dispatch`: the
Triton product for small M on CUDA (it skips loading the weights of channels every row drops;
on the stored [out, in] weight that saves memory traffic only where neighbouring channels are
dropped together, see `sparsekit.kernels.act_sparse_triton`), else the masked dense product,
which on CPU is bit for bit the mask-then-linear result. The op is skipped (mask, then the
wrapped module) when the counters are on (they need the mask), when autograd needs the result
(the op has no backward), and for any other wrapped module (a 2:4 linear, an activation
module) or extra call arguments.

Counters (non-persistent int64 buffers, no host sync): ``zeroed`` inputs and ``entries`` seen in
sparsified calls, and tokens in sparsified / dense calls; `activation_sparsity_report`
aggregates them per layer type. Thresholds and scales are non-persistent buffers too, and the
wrapper's state_dict uses the wrapped module's own names (``q_proj.weight``, not
``q_proj.inner.weight``), so ``save_pretrained`` of a model with sparsity installed still writes
a plain dense checkpoint; thresholds live in their own file (`sparsekit.files.thresholds`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from sparsekit.anatomy import Wrapper, decoder_layers, linear_kind, set_submodule
from sparsekit.errors import UsageError
from sparsekit.runtime import act_dispatch

__all__ = [
    "ACT_MODES",
    "ActSparse",
    "act_sparse_linear",
    "activation_modules",
    "activation_sparsity_report",
    "check_mode",
    "count_activation",
    "install_activation_sparsity",
    "keep_mask",
    "remove_activation_sparsity",
    "set_activation_mode",
]

ACT_MODES = ("all", "decode")   # the one vocabulary of activation-sparsity modes
WHERE = ("input", "output")
_HOOKS_ATTR = "_sparsekit_activation_hooks"


class _Phase:
    """Positions per sequence of the decoder-layer call running now (None: unknown)."""
    __slots__ = ("positions",)

    def __init__(self):
        self.positions: int | None = None


def _positions_from_shape(x: torch.Tensor) -> int:
    if x.dim() >= 3:
        return int(x.shape[-2])
    if x.dim() == 2:
        return int(x.shape[0])
    return 1


def keep_mask(x: torch.Tensor, threshold: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The rule of the module docstring: bool ``keep`` of x's shape (float32 arithmetic)."""
    importance = x.detach().abs()
    if importance.dtype != torch.float32:
        importance = importance.float()
    if scale is not None:
        importance = importance * scale
    return importance > threshold


def _capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


@torch.library.custom_op("sparsekit::act_sparse_linear", mutates_args=())
def act_sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      threshold: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(mask(x), weight, bias)`` for 2-D x [M, K], weight [N, K] as ``nn.Linear``
    stores it (never copied), float32 ``threshold`` (scalar or [K]) and ``scale`` ([K] or
    None); y [M, N] in x's dtype. The path is `act_dispatch.select`'s."""
    backend, cfg = act_dispatch.select(x.shape[0], x.dtype, _capability(x.device))
    if backend == "triton":
        from sparsekit.kernels.act_sparse_triton import act_sparse_mm

        return act_sparse_mm(x, weight.t(), threshold, scale, bias, **cfg.kwargs())
    return F.linear(x.masked_fill(~keep_mask(x, threshold, scale), 0), weight, bias)


@act_sparse_linear.register_fake
def _(x, weight, bias, threshold, scale):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _channels(inner: nn.Module, where: str) -> int | None:
    attr = "in_features" if where == "input" else "out_features"
    value = getattr(inner, attr, None)
    return int(value) if isinstance(value, int) else None


class ActSparse(Wrapper):
    """Wrap ``inner`` and zero, per token, its input (or output) entries of low importance.

    Args:
        inner: the wrapped module (called as ``inner(x, *args, **kwargs)``).
        threshold: scalar or [C] (float32 after conversion; ``inf`` drops a channel always).
        scale: optional [C] non-negative importance weights (WINA column norms).
        where: "input" or "output" (module docstring).
        mode: "all" or "decode".
        count: keep the zeroed-fraction counters (one reduction per call; an ``nn.Linear``
            input site then runs mask-then-linear instead of the op, so counts stay exact).
    """

    def __init__(self, inner: nn.Module, threshold, scale: torch.Tensor | None = None, *,
                 where: str = "input", mode: str = "all", count: bool = True):
        super().__init__()
        if where not in WHERE:
            raise ValueError(f"where must be one of {WHERE}, got {where!r}")
        check_mode(mode)
        self.inner = inner
        self.where, self.mode, self.count, self.enabled = where, mode, bool(count), True
        self._phase: _Phase | None = None
        p = next(inner.parameters(), None)
        if p is None:
            p = next(inner.buffers(), None)
        dev = p.device if p is not None else torch.device("cpu")
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float32, device=dev), persistent=False)
        self.register_buffer("scale", None, persistent=False)
        for name in ("zeroed", "entries", "tokens_sparse", "tokens_dense"):
            self.register_buffer(name, torch.zeros((), dtype=torch.int64, device=dev), persistent=False)
        self.set_threshold(threshold, scale)
        self.register_state_dict_post_hook(_flatten_state_dict)
        self.register_load_state_dict_pre_hook(_nest_state_dict)

    # ------------------------------------------------------------ settings
    @property
    def channels(self) -> int | None:
        return _channels(self.inner, self.where)

    def set_threshold(self, threshold, scale: torch.Tensor | None = None) -> None:
        """Replace the threshold (scalar or [C]) and the scale ([C] or None)."""
        dev = self.threshold.device
        t = torch.as_tensor(threshold, dtype=torch.float32).detach().to(dev).clone()
        c = self.channels
        if t.dim() > 1 or (t.dim() == 1 and c is not None and t.numel() != c):
            raise ValueError(f"threshold must be a scalar or [{c}], got shape {tuple(t.shape)}")
        if bool(torch.isnan(t).any()) or bool((t < 0).any()):
            raise ValueError("threshold must be non-negative and not NaN")
        s = None
        if scale is not None:
            s = torch.as_tensor(scale, dtype=torch.float32).detach().to(dev).reshape(-1).clone()
            if c is not None and s.numel() != c:
                raise ValueError(f"scale must have {c} entries, got {s.numel()}")
        self.threshold = t
        self.scale = s

    def reset_counters(self) -> None:
        for name in ("zeroed", "entries", "tokens_sparse", "tokens_dense"):
            getattr(self, name).zero_()

    @property
    def zeroed_fraction(self) -> float | None:
        """Fraction of entries zeroed over the sparsified calls since the last reset (a sync)."""
        n = int(self.entries)
        return int(self.zeroed) / n if n else None

    # -------------------------------------------------------------- compute
    def _sparsify_this_call(self, x: torch.Tensor) -> bool:
        if not self.enabled:
            return False
        if self.mode == "all":
            return True
        phase = self._phase
        positions = phase.positions if phase is not None and phase.positions is not None \
            else _positions_from_shape(x)
        return positions == 1

    def apply_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The rule of the module docstring on ``x: [..., C]`` (respecting mode and enabled)."""
        if not self._sparsify_this_call(x):
            if self.count and self.enabled and x.dim() > 0:
                self.tokens_dense += x.numel() // max(x.shape[-1], 1)
            return x
        keep = keep_mask(x, self.threshold, self.scale)
        if self.count:
            self.zeroed += keep.numel() - keep.count_nonzero()
            self.entries += keep.numel()
            self.tokens_sparse += keep.numel() // max(keep.shape[-1], 1)
        return x.masked_fill(~keep, 0)

    def _op_call(self, x: torch.Tensor, args: tuple, kwargs: dict) -> bool:
        """Whether this call goes through `act_sparse_linear` (module docstring, "Compute")."""
        inner = self.inner
        if self.count or args or kwargs or type(inner) is not nn.Linear or x.dim() == 0:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in inner.parameters())):
            return False
        return self._sparsify_this_call(x)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.where == "input":
            if self._op_call(x, args, kwargs):
                lin = self.inner
                y = act_sparse_linear(x.reshape(-1, lin.in_features), lin.weight, lin.bias,
                                      self.threshold, self.scale)
                return y.reshape(*x.shape[:-1], lin.out_features)
            return self.inner(self.apply_mask(x), *args, **kwargs)
        return self.apply_mask(self.inner(x, *args, **kwargs))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("inner")
            if inner is None or name.startswith("_"):
                raise
            return getattr(inner, name)  # weight, bias, in_features, ... of the wrapped module

    def extra_repr(self) -> str:
        kind = "scalar" if self.threshold.dim() == 0 else f"per-channel[{self.threshold.numel()}]"
        return (f"where={self.where}, mode={self.mode}, threshold={kind}, "
                f"scale={'yes' if self.scale is not None else 'no'}")


def _flatten_state_dict(module: ActSparse, state_dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: ``<prefix>inner.<k>`` -> ``<prefix><k>`` in place, order kept."""
    nested = prefix + "inner."
    if not any(k.startswith(nested) for k in state_dict):
        return
    items = list(state_dict.items())
    state_dict.clear()
    for k, v in items:
        state_dict[prefix + k[len(nested):] if k.startswith(nested) else k] = v


def _nest_state_dict(module: ActSparse, state_dict, prefix: str, local_metadata, strict,
                     missing_keys, unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: accept the wrapped module's own names (``<prefix><k>``)."""
    nested = prefix + "inner."
    for k in [k for k in state_dict if k.startswith(prefix) and not k.startswith(nested)]:
        state_dict[nested + k[len(prefix):]] = state_dict.pop(k)


# ----------------------------------------------------------------- installer
def activation_modules(model: nn.Module) -> dict[str, ActSparse]:
    """Installed wrappers by the full name of the module they replaced."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ActSparse)}


def check_mode(mode: str) -> None:
    if mode not in ACT_MODES:
        raise UsageError(f"unknown activation-sparsity mode {mode!r}: use one of {', '.join(ACT_MODES)}")


def _phase_hooks(model: nn.Module, phase: _Phase) -> None:
    for handle in getattr(model, _HOOKS_ATTR, []):
        handle.remove()

    def record(module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        phase.positions = _positions_from_shape(hidden) if isinstance(hidden, torch.Tensor) else None

    _, layers = decoder_layers(model)
    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    object.__setattr__(model, _HOOKS_ATTR, handles)


def install_activation_sparsity(model: nn.Module, spec: dict, tensors: dict[str, torch.Tensor], *,
                                mode: str | None = None, count: bool = True) -> dict[str, ActSparse]:
    """Swap an `ActSparse` in for every site of ``spec["sites"]`` (the ``activation`` section of
    sparsekit.json): ``{module name: {"where": "input" | "output", ...}}``, with thresholds
    ``tensors["<name>.threshold"]`` and optional scales ``tensors["<name>.scale"]``.

    ``mode`` overrides ``spec["mode"]`` (default "all"). A site that is already wrapped gets its
    thresholds replaced. ``count`` keeps the zeroed-input counters (loading a saved model
    turns them off for inference; `count_activation` switches them later). Returns the wrappers by name.
    """
    sites = spec.get("sites")
    if not isinstance(sites, dict) or not sites:
        raise UsageError("the activation section has no sites: re-run `sparsekit prune --activation ...`")
    mode = mode or spec.get("mode") or "all"
    check_mode(mode)
    phase = _Phase()
    out: dict[str, ActSparse] = {}
    for name, info in sites.items():
        where = (info or {}).get("where", "input")
        key = f"{name}.threshold"
        if key not in tensors:
            raise UsageError(f"activation thresholds lack tensor {key!r}: the thresholds file does not "
                             "match sparsekit.json; re-run `sparsekit prune --activation ...`")
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise UsageError(f"activation site {name!r} is not a module of {type(model).__name__}: "
                             "the thresholds were made for another model") from None
        scale = tensors.get(f"{name}.scale")
        if isinstance(module, ActSparse):
            module.set_threshold(tensors[key], scale)
            module.mode, module.count = mode, count
            wrapper = module
        else:
            try:
                wrapper = ActSparse(module, tensors[key], scale, where=where, mode=mode, count=count)
            except ValueError as exc:
                raise UsageError(f"activation site {name!r}: {exc}; the thresholds were made for "
                                 "another model") from None
            set_submodule(model, name, wrapper)
        wrapper._phase = phase
        out[name] = wrapper
    _phase_hooks(model, phase)
    return out


def remove_activation_sparsity(model: nn.Module) -> int:
    """Put the wrapped modules back; returns how many wrappers were removed."""
    found = activation_modules(model)
    for name, wrapper in sorted(found.items(), key=lambda kv: -kv[0].count(".")):
        set_submodule(model, name, wrapper.inner)
    for handle in getattr(model, _HOOKS_ATTR, []):
        handle.remove()
    if hasattr(model, _HOOKS_ATTR):
        object.__delattr__(model, _HOOKS_ATTR)
    return len(found)


def set_activation_mode(model: nn.Module, mode: str | None = None, enabled: bool | None = None) -> None:
    """Change the mode and/or switch every installed wrapper on or off."""
    if mode is not None:
        check_mode(mode)
    for m in activation_modules(model).values():
        if mode is not None:
            m.mode = mode
        if enabled is not None:
            m.enabled = bool(enabled)


def count_activation(model: nn.Module, on: bool = True) -> None:
    """Turn the zeroed-input counters of every installed wrapper on (for measuring; one extra
    reduction per call) or off (the default after loading, for inference)."""
    for m in activation_modules(model).values():
        m.count = bool(on)


def activation_sparsity_report(model: nn.Module) -> dict[str, dict]:
    """Measured sparsity per layer type (e.g. ``self_attn.q_proj``, ``mlp.act_fn``), over all layers:
    ``{type: {"zeroed": fraction of entries zeroed in sparsified calls (None if none),
    "sparsified_tokens": fraction of tokens that went through a sparsified call, "layers": n}}``."""
    acc: dict[str, list[int]] = OrderedDict()
    for name, m in activation_modules(model).items():
        a = acc.setdefault(linear_kind(name), [0, 0, 0, 0, 0])
        a[0] += int(m.zeroed)
        a[1] += int(m.entries)
        a[2] += int(m.tokens_sparse)
        a[3] += int(m.tokens_dense)
        a[4] += 1
    return {kind: {"zeroed": z / e if e else None,
                   "sparsified_tokens": ts / (ts + td) if ts + td else None,
                   "layers": n}
            for kind, (z, e, ts, td, n) in acc.items()}
