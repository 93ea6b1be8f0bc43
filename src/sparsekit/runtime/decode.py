"""A compiled decode runtime for causal LMs: static KV cache, greedy (or teacher-forced)
decoding, the decode step compiled with ``torch.compile`` and captured in one CUDA graph.

    from sparsekit.runtime.decode import compile_decode
    rt = compile_decode(model, batch_size=1, max_length=1024)
    tokens = rt.generate(input_ids, max_new_tokens=64)   # [B, prompt + new]

* Prefill runs eagerly (one forward over the prompt; large-M matmuls, already efficient).
* The decode step (model forward for one token per sequence over the static cache, argmax,
  and the bookkeeping of the next input, position and step) is compiled, so the non-matmul
  work between the matmuls (norms, rotary, residuals, activation, attention glue) is fused
  by Inductor, then captured in a CUDA graph and replayed once per token without host work.
  Sparsekit's 2:4 layers are one custom op each (``sparsekit::s24_linear``), opaque to the
  compiler, so dense and 2:4 models run in the same runtime and differ only in the matmuls.
* On CPU (or with ``compile=False`` / ``cuda_graph=False``) the same step runs eagerly and
  gives the same tokens and logits; if compilation or capture fails on a GPU the runtime
  falls back to eager and says why (``compile_error`` / ``graph_error``).

The whole model forward is one compiled region: per-layer compilation would recompile for
every layer, because the cache is indexed by each layer's Python ``layer_idx``.
"""

from __future__ import annotations

import inspect
import time

import torch
from torch import nn


def _device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def _cache_kwarg(model: nn.Module) -> str:
    """Name of the KV-cache argument of ``model.forward`` ("cache" in newer transformers)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _is_sliding(layer) -> bool:
    return "Sliding" in type(layer).__name__


def _snapshot(cache) -> list:
    """Everything a decode step may change in a transformers cache besides the new key/value
    rows: the layers' small tensors (e.g. ``cumulative_length``), Python numbers and flags
    (e.g. ``cumulative_length_int``), and the whole keys/values of sliding-window layers
    (which roll their window). :func:`_restore` puts it back, tensors in place (a captured
    CUDA graph keeps pointing at them)."""
    snap = []
    for layer in getattr(cache, "layers", []):
        for name, val in vars(layer).items():
            if isinstance(val, torch.Tensor):
                if (name in ("keys", "values") and _is_sliding(layer)) or val.numel() <= 16:
                    snap.append((layer, name, val.clone()))
            elif isinstance(val, (bool, int, float)):
                snap.append((layer, name, val))
    return snap


def _restore(snap: list) -> None:
    for layer, name, val in snap:
        if isinstance(val, torch.Tensor):
            getattr(layer, name).copy_(val)
        else:
            setattr(layer, name, val)


def _python_counters(cache) -> dict:
    """(layer, attribute) -> value of the layers' Python ints: a graph replay does not advance
    them, so the runtime does (by the per-step increment seen during warm-up)."""
    return {(layer, name): val for layer in getattr(cache, "layers", [])
            for name, val in vars(layer).items()
            if isinstance(val, int) and not isinstance(val, bool)}


def _window_key(cache, position: int) -> tuple:
    """Which branch (window full or not) each sliding-window layer takes at ``position``: a
    captured step is only valid while these stay the same."""
    return tuple(position >= layer.max_cache_len for layer in getattr(cache, "layers", [])
                 if _is_sliding(layer))


class DecodeRuntime:
    """Greedy/teacher-forced decoding of ``batch_size`` sequences up to ``max_length`` tokens.

    ``compile`` / ``cuda_graph``: None = on for CUDA, off for CPU. ``backend`` is the
    ``torch.compile`` backend ("inductor"; "eager"/"aot_eager" trace without code generation,
    which is how the CPU tests check that the step compiles without recompiling)."""

    def __init__(self, model: nn.Module, batch_size: int, max_length: int,
                 compile: bool | None = None, cuda_graph: bool | None = None,
                 backend: str = "inductor", record_rows: int = 0, record_steps: int = 0):
        from transformers import StaticCache

        self.model = model.eval()
        self.device = _device(model)
        cuda = self.device.type == "cuda"
        self.compile = cuda if compile is None else compile
        self.cuda_graph = cuda if cuda_graph is None else (cuda_graph and cuda)
        self.backend = backend
        self.batch_size = batch_size
        self.max_length = max_length
        self.cache = StaticCache(config=model.config, max_cache_len=max_length)
        dev = self.device
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.step_idx = torch.zeros(1, dtype=torch.long, device=dev)
        self.use_teacher = torch.zeros((), dtype=torch.bool, device=dev)
        self.teacher = torch.zeros(batch_size, max_length + 1, dtype=torch.long, device=dev)
        self.history = torch.zeros(batch_size, max_length + 1, dtype=torch.long, device=dev)
        self.record_rows = min(record_rows, batch_size)
        self.record_steps = record_steps if record_rows else 0
        vocab = model.get_output_embeddings().weight.shape[0]
        self.logits_log = (torch.zeros(self.record_rows, self.record_steps + 1, vocab,
                                       dtype=torch.float32, device=dev)
                           if self.record_rows else None)
        self.prompt_len = 0
        self._cache_arg = _cache_kwarg(model)
        self.compiled = False
        self.compile_error: str | None = None
        self.compile_seconds = 0.0
        self._py_steps: dict = {}
        self.graph_error: str | None = None
        self._graph = None
        self._forward = self._eager_forward
        if self.compile:
            try:
                self._forward = torch.compile(self._eager_forward, backend=backend,
                                              dynamic=False)
                self.compiled = True
            except Exception as e:  # noqa: BLE001 - reported, eager still works
                self.compile_error = f"{type(e).__name__}: {e}"

    # -- the decode step --------------------------------------------------------------------
    def _eager_forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, cache_position=pos, use_cache=True, logits_to_keep=1,
                         **{self._cache_arg: self.cache})
        return out.logits[:, -1]

    def _step(self, forward=None) -> None:
        """One decode step on the static buffers (what the CUDA graph holds)."""
        forced = self.teacher.index_select(1, self.step_idx)
        self.ids.copy_(torch.where(self.use_teacher, forced, self.ids))
        logits = (forward or self._forward)(self.ids, self.pos)
        nxt = logits.argmax(-1, keepdim=True)
        self.history.index_copy_(1, self.step_idx, nxt)
        if self.logits_log is not None:
            at = self.step_idx.clamp(max=self.record_steps)
            self.logits_log.index_copy_(1, at, logits[: self.record_rows, None].float())
        self.ids.copy_(nxt)
        self.pos.add_(1)
        self.step_idx.add_(1)

    def _set_state(self, position: int, first_ids: torch.Tensor, snap=()) -> None:
        self.pos.fill_(position)
        self.step_idx.zero_()
        self.ids.copy_(first_ids)
        _restore(snap)

    def _capture(self) -> None:
        """Warm up (compiles on the first call) and capture one step in a CUDA graph at the
        current position. Everything the warm-up changed is restored afterwards (the steps
        wrote scratch key/value rows at and past the current position, which the real steps
        overwrite before they are read)."""
        position = int(self.pos.item())
        saved = (position, self.ids.clone(), _snapshot(self.cache))
        before = _python_counters(self.cache)
        t0 = time.perf_counter()

        def warm_up():  # the same step twice from the same state (same guards: one compile)
            for _ in range(2 if self.device.type == "cuda" else 1):
                self._set_state(*saved)
                self._step()

        try:
            if self.device.type == "cuda":
                s = torch.cuda.Stream(self.device)
                s.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(s):
                    warm_up()
                torch.cuda.current_stream(self.device).wait_stream(s)
            else:
                warm_up()
        except Exception as e:
            if not self.compiled:
                raise
            self.compile_error = f"{type(e).__name__}: {e}"
            self.compiled = False
            self._forward = self._eager_forward
            warm_up()
        after = _python_counters(self.cache)
        self._py_steps = {key: after[key] - v for key, v in before.items()
                          if key in after and after[key] != v}
        self.compile_seconds += time.perf_counter() - t0
        self._set_state(*saved)
        self._graph = None
        if self.cuda_graph:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._step()
                self._graph = graph
            except Exception as e:  # noqa: BLE001 - eager replay instead
                self.graph_error = f"{type(e).__name__}: {e}"
            self._set_state(*saved)
        self._captured_key = _window_key(self.cache, position)

    # -- public API -------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Reset the cache, run the prompt [B, T] (eager) and return its last logits [B, V];
        the next decode step starts from their argmax (or the teacher's first token)."""
        b, t = input_ids.shape
        if b != self.batch_size:
            raise ValueError(f"this runtime decodes batches of {self.batch_size}, got {b}")
        if t >= self.max_length:
            raise ValueError(f"prompt of {t} tokens leaves no room in max_length={self.max_length}")
        self.cache.reset()
        input_ids = input_ids.to(self.device)
        pos = torch.arange(t, device=self.device)
        out = self.model(input_ids=input_ids, cache_position=pos, use_cache=True,
                         logits_to_keep=1, **{self._cache_arg: self.cache})
        logits = out.logits[:, -1]
        self.prompt_len = t
        self._set_state(t, logits.argmax(-1, keepdim=True))
        return logits

    @torch.no_grad()
    def decode(self, steps: int, teacher: torch.Tensor | None = None) -> torch.Tensor:
        """Run ``steps`` decode steps after :meth:`prefill`; returns the argmax tokens
        [B, steps]. With ``teacher`` [B, >= steps], step j consumes ``teacher[:, j]`` instead
        of the previous argmax (teacher forcing; ``teacher[:, 0]`` replaces the prefill's
        argmax). Logits of the first ``record_rows`` sequences are kept for
        :meth:`recorded_logits` (up to ``record_steps`` steps)."""
        position = int(self.pos.item())
        if position + steps > self.max_length:
            raise ValueError(f"{position} + {steps} tokens exceed max_length={self.max_length}")
        self.use_teacher.fill_(teacher is not None)
        if teacher is not None:
            self.teacher[:, : teacher.shape[1]].copy_(teacher[:, : self.teacher.shape[1]])
        self.step_idx.zero_()
        key = _window_key(self.cache, position)
        if key != _window_key(self.cache, position + max(steps - 1, 0)):
            # a sliding window fills up during this call: the layers change branch, which a
            # captured step cannot follow; run these steps eagerly
            for _ in range(steps):
                self._step(self._eager_forward)
            return self.history[:, :steps].clone()
        if key != getattr(self, "_captured_key", None):
            self._capture()
        for _ in range(steps):
            if self._graph is not None:
                self._graph.replay()
            else:
                self._step()
        if self._graph is not None:  # advance the Python counters the replays skipped
            for (layer, name), inc in self._py_steps.items():
                setattr(layer, name, getattr(layer, name) + inc * steps)
        return self.history[:, :steps].clone()

    def recorded_logits(self, steps: int) -> torch.Tensor | None:
        """fp32 logits [record_rows, min(steps, record_steps), V] of the last :meth:`decode`."""
        if self.logits_log is None:
            return None
        return self.logits_log[:, : min(steps, self.record_steps)].clone()

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation: [B, T + max_new_tokens] (prompt included)."""
        logits = self.prefill(input_ids)
        first = logits.argmax(-1, keepdim=True)
        if max_new_tokens <= 1:
            return torch.cat([input_ids.to(self.device), first], dim=1)[:, : input_ids.shape[1]
                                                                        + max_new_tokens]
        rest = self.decode(max_new_tokens - 1)
        return torch.cat([input_ids.to(self.device), first, rest], dim=1)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def compile_decode(model: nn.Module, batch_size: int = 1, max_length: int = 2048,
                   **kwargs) -> DecodeRuntime:
    """A :class:`DecodeRuntime` for ``model`` (dense, 2:4 via ``sparsekit.load`` or
    :func:`~sparsekit.runtime.sparse24_linear.sparsify_model_24`, or both mixed)."""
    return DecodeRuntime(model, batch_size, max_length, **kwargs)
