"""Which path multiplies M rows of an activation-sparse linear (``sparsekit::act_sparse_linear``):
pure functions of (M, dtype, GPU capability), in the style of :mod:`sparsekit.runtime.dispatch24`.

A table is a tuple of entries ``(max_m, backend, config)`` in ascending ``max_m`` (``None`` =
no bound); the first entry with ``M <= max_m`` wins:

* ``"triton"``: :func:`sparsekit.kernels.act_sparse_triton.act_sparse_mm` with the tiles of
  ``config`` (an :class:`ActConfig`), for ``1 <= M <=`` :data:`MAX_M` only;
* ``"torch"``: the masked dense product (mask, then ``F.linear``), ``config`` None.

CPU tensors, dtypes the kernel does not take and M outside the kernel's range always take
"torch" (:data:`CPU_BACKEND`). The choice uses host-side facts only (no device sync), so
CUDA graphs and ``torch.compile`` see a fixed path for fixed shapes.

:func:`force` overrides the choice for the calls made inside it (tests run the Triton path
on CPU tensors under ``TRITON_INTERPRET=1``; the bench's reference run forces "torch");
:func:`select` is what the op calls: :func:`choose` unless a backend is forced.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch

from sparsekit.dtypes import dtype_name
from sparsekit.kernels.act_sparse import MAX_M

__all__ = ["BACKENDS", "CPU_BACKEND", "DEFAULT_DISPATCH", "DISPATCH", "KERNEL_DTYPES", "MAX_M",
           "ActConfig", "check_table", "choose", "force", "forced", "select", "table_for"]

CPU_BACKEND = "torch"
BACKENDS = ("triton", "torch")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class ActConfig(NamedTuple):
    """Tiles of the Triton product: keyword arguments of ``act_sparse_mm``."""
    bk: int = 64
    bn: int = 128
    num_warps: int = 4

    def kwargs(self) -> dict:
        return self._asdict()


Entry = tuple  # (max_m: int | None, backend: str, config: ActConfig | None)

# Untuned defaults: the kernel holds a [BM, BK, BN] fp32 product per program, kept at 16K
# values (128 per thread with 4 warps) as M grows; larger M is dense work anyway.
DEFAULT_DISPATCH: tuple[Entry, ...] = (
    (2, "triton", ActConfig(bk=64, bn=128, num_warps=4)),
    (4, "triton", ActConfig(bk=32, bn=128, num_warps=4)),
    (MAX_M, "triton", ActConfig(bk=16, bn=64, num_warps=4)),
    (None, "torch", None),
)

# (major, minor, dtype name) -> table, for measured tables
DISPATCH: dict[tuple[int, int, str], tuple[Entry, ...]] = {}

_forced: str | None = None


def table_for(dtype: torch.dtype, capability: tuple[int, int]) -> tuple[Entry, ...]:
    return DISPATCH.get((capability[0], capability[1], dtype_name(dtype)), DEFAULT_DISPATCH)


def _entry(table: tuple[Entry, ...], m: int) -> tuple[str, ActConfig | None]:
    for max_m, backend, config in table:
        if max_m is None or m <= max_m:
            return backend, config
    return CPU_BACKEND, None


def choose(m: int, dtype: torch.dtype,
           capability: tuple[int, int] | None) -> tuple[str, ActConfig | None]:
    """(backend, Triton config) for M rows of ``dtype`` on a GPU of ``capability``
    (``None`` = CPU: ``("torch", None)``)."""
    if capability is None or dtype not in KERNEL_DTYPES or not 1 <= m <= MAX_M:
        return CPU_BACKEND, None
    return _entry(table_for(dtype, capability), m)


def forced() -> str | None:
    """The backend :func:`force` imposes now (None: the table decides)."""
    return _forced


@contextmanager
def force(backend: str | None):
    """Within the block every activation-sparse op call takes ``backend`` ("triton" or
    "torch"; None: the table decides). Not thread-local; the previous setting comes back."""
    global _forced
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    before, _forced = _forced, backend
    try:
        yield
    finally:
        _forced = before


def select(m: int, dtype: torch.dtype,
           capability: tuple[int, int] | None) -> tuple[str, ActConfig | None]:
    """:func:`choose`, unless a backend is forced: "torch" always; "triton" with the config
    of the table entry for M (the default table on CPU), ValueError outside 1..MAX_M."""
    if _forced is None:
        return choose(m, dtype, capability)
    if _forced == CPU_BACKEND:
        return CPU_BACKEND, None
    if not 1 <= m <= MAX_M:
        raise ValueError(f"the triton backend was forced for {m} rows: it handles 1..{MAX_M}")
    table = DEFAULT_DISPATCH if capability is None else table_for(dtype, capability)
    for max_m, backend, config in table:
        if backend == "triton" and (max_m is None or m <= max_m):
            return "triton", config
    return "triton", ActConfig()


def check_table(table: tuple[Entry, ...]) -> None:
    """Raise ValueError unless ``table`` is well formed (ascending bounds, last unbounded,
    known backends, a config exactly for "triton" entries, "triton" only up to MAX_M)."""
    last = 0
    for i, (max_m, backend, config) in enumerate(table):
        if backend not in BACKENDS:
            raise ValueError(f"entry {i}: unknown backend {backend!r}")
        if (backend == "triton") != isinstance(config, ActConfig):
            raise ValueError(f"entry {i}: a triton entry needs an ActConfig, a torch entry None")
        if backend == "triton" and (max_m is None or max_m > MAX_M):
            raise ValueError(f"entry {i}: the triton kernel serves M <= {MAX_M} only")
        if max_m is None:
            if i != len(table) - 1:
                raise ValueError(f"entry {i}: only the last entry may be unbounded")
        elif max_m <= last:
            raise ValueError(f"entry {i}: bounds must increase")
        last = max_m or last
    if not table or table[-1][0] is not None:
        raise ValueError("the last entry must have max_m None")


for _table in (DEFAULT_DISPATCH, *DISPATCH.values()):  # a pasted table that is malformed fails at import
    check_table(_table)
