"""``Sparse24Linear``: an inference-only drop-in for ``nn.Linear`` with a 2:4 weight.

Memory: only the packed form (``values`` + ``meta``, 9/16 of the dense bytes in 16-bit) is
kept, as buffers, so ``.to(device)``/``.half()`` work. The dense weight is *not* cached by
default: for large M it is rebuilt on the fly by one Triton kernel (``N*K`` writes, a few
percent of a prefill GEMM) and freed after the matmul, so peak memory grows by at most one
layer's dense weight. ``cache_dense=True`` keeps it after the first large-M call instead
(faster prefill, but memory then exceeds dense; only for benchmarking or prefill-bound use).

Dispatch (per call, from host-side metadata only: M, dtype, device capability; no host
sync, so CUDA graphs and ``torch.compile`` see a fixed path for fixed shapes):

* ``triton``     our kernels (``sparse24_triton``), small M;
* ``cusparselt`` ``torch.sparse.to_sparse_semi_structured`` on the decompressed weight,
  created lazily on first use (an extra 9/16 copy), for mid-size M where it wins;
* ``dense``      decompress + cuBLAS.

The choice comes from :data:`DISPATCH`, keyed by (compute capability, dtype) with M
thresholds; unknown GPUs use :data:`DEFAULT_DISPATCH` (Triton up to M = 16, then dense).
``benchmarks/kernels.py`` prints measured tables in this format. CPU always uses plain
torch (decompress + ``F.linear``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsekit.kernels.sparse24 import Packed24, check_24, pack_24, unpack_24

# (major, minor, dtype name) -> ((max_m, backend), ...) ascending; max_m None = no bound
DispatchTable = tuple[tuple[int | None, str], ...]
DEFAULT_DISPATCH: DispatchTable = ((16, "triton"), (None, "dense"))
DISPATCH: dict[tuple[int, int, str], DispatchTable] = {
    # filled from benchmarks/kernels.py output once measured, e.g.
    # (9, 0, "bfloat16"): ((16, "triton"), (None, "dense")),
}

# (major, minor, dtype name) -> ((max_m, Sparse24Config kwargs), ...); default below
TRITON_CONFIGS: dict[tuple[int, int, str], tuple[tuple[int, dict], ...]] = {}
DEFAULT_TRITON_CONFIGS: tuple[tuple[int, dict], ...] = (
    (2, dict(kernel="gemv", bn=4, bg=128, num_warps=4)),
    (16, dict(kernel="dot", bn=64, bg=32, num_warps=4)),
)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def choose_backend(m: int, dtype: torch.dtype, capability: tuple[int, int] | None) -> str:
    """Pure function: backend for M rows of ``dtype`` on a GPU of ``capability``
    (``None`` = CPU, which always gets ``"torch"``)."""
    if capability is None:
        return "torch"
    if dtype not in (torch.float16, torch.bfloat16):
        return "dense"
    table = DISPATCH.get((capability[0], capability[1], _dtype_name(dtype)), DEFAULT_DISPATCH)
    for max_m, backend in table:
        if max_m is None or m <= max_m:
            return backend
    return "dense"


def choose_triton_config(m: int, dtype: torch.dtype, capability: tuple[int, int] | None):
    from sparsekit.kernels.sparse24_triton import Sparse24Config

    key = (capability or (0, 0)) + (_dtype_name(dtype),)
    for max_m, kw in TRITON_CONFIGS.get(key, DEFAULT_TRITON_CONFIGS):
        if m <= max_m:
            return Sparse24Config(**kw)
    return Sparse24Config(**DEFAULT_TRITON_CONFIGS[-1][1])


def _capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


# --- custom op so torch.compile treats the Triton launch as one opaque node -------------
@torch.library.custom_op("sparsekit::s24_mm", mutates_args=())
def _s24_mm_op(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, in_features: int,
               bias: torch.Tensor | None, kernel: str, bn: int, bg: int, split_k: int,
               num_warps: int) -> torch.Tensor:
    from sparsekit.kernels.sparse24_triton import Sparse24Config, sparse24_mm

    cfg = Sparse24Config(kernel, bn, bg, split_k, num_warps)
    return sparse24_mm(x, values, meta, in_features, bias, cfg)


@_s24_mm_op.register_fake
def _(x, values, meta, in_features, bias, kernel, bn, bg, split_k, num_warps):
    return x.new_empty((x.shape[0], values.shape[0]))


@torch.library.custom_op("sparsekit::s24_decompress", mutates_args=())
def _s24_decompress_op(values: torch.Tensor, meta: torch.Tensor,
                       in_features: int) -> torch.Tensor:
    from sparsekit.kernels.sparse24_triton import sparse24_decompress

    return sparse24_decompress(values, meta, in_features)


@_s24_decompress_op.register_fake
def _(values, meta, in_features):
    return values.new_empty((values.shape[0], in_features))


class Sparse24Linear(nn.Module):
    """Linear layer whose weight [out, in] is exactly 2:4 along ``in``, stored packed."""

    def __init__(self, values: torch.Tensor, meta: torch.Tensor, in_features: int,
                 bias: torch.Tensor | None = None, cache_dense: bool = False):
        super().__init__()
        if values.dim() != 2 or meta.dim() != 2 or meta.dtype != torch.int16:
            raise ValueError("values must be [N, Kp/2] and meta int16 [N, Kp/16]")
        if values.shape[1] * 2 < in_features or meta.shape != (values.shape[0],
                                                               values.shape[1] // 8):
            raise ValueError(f"packed shapes {tuple(values.shape)}, {tuple(meta.shape)} do "
                             f"not match in_features={in_features}")
        self.in_features = in_features
        self.out_features = values.shape[0]
        self.cache_dense = cache_dense
        self.register_buffer("values", values.contiguous())
        self.register_buffer("meta", meta.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._dense_cache: torch.Tensor | None = None
        self._cusparselt = None

    @classmethod
    def from_dense(cls, linear: nn.Linear, cache_dense: bool = False) -> "Sparse24Linear":
        """Pack ``linear.weight``; raises ValueError if it is not exactly 2:4 along in."""
        w = linear.weight.detach()
        check_24(w)
        p = pack_24(w, check=False)
        return cls(p.values, p.meta, linear.in_features, linear.bias, cache_dense)

    @classmethod
    def from_packed(cls, packed: Packed24, bias: torch.Tensor | None = None,
                    cache_dense: bool = False) -> "Sparse24Linear":
        return cls(packed.values, packed.meta, packed.in_features, bias, cache_dense)

    def packed(self) -> Packed24:
        return Packed24(self.values, self.meta, self.in_features)

    def to_dense_weight(self) -> torch.Tensor:
        return unpack_24(self.packed())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, layout=2:4 packed")

    def _dense_weight(self) -> torch.Tensor:
        if self._dense_cache is not None and self._dense_cache.device == self.values.device \
                and self._dense_cache.dtype == self.values.dtype:
            return self._dense_cache
        if self.values.is_cuda:
            w = _s24_decompress_op(self.values, self.meta, self.in_features)
        else:
            w = self.to_dense_weight()
        if self.cache_dense:
            self._dense_cache = w
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        m = x2.shape[0]
        backend = choose_backend(m, x.dtype, _capability(x.device))
        if backend == "triton":
            cfg = choose_triton_config(m, x.dtype, _capability(x.device))
            y = _s24_mm_op(x2, self.values, self.meta, self.in_features, self.bias,
                           cfg.kernel, cfg.bn, cfg.bg, cfg.split_k, cfg.num_warps)
        elif backend == "cusparselt":
            y = self._cusparselt_linear(x2)
        else:  # "dense" (GPU) or "torch" (CPU)
            y = F.linear(x2, self._dense_weight(), self.bias)
        return y.reshape(*lead, self.out_features)

    def _cusparselt_linear(self, x2: torch.Tensor) -> torch.Tensor:
        if self._cusparselt is None:
            from torch.sparse import to_sparse_semi_structured

            self._cusparselt = to_sparse_semi_structured(self._dense_weight().contiguous())
        return F.linear(x2, self._cusparselt, self.bias)


def is_24(weight: torch.Tensor) -> bool:
    try:
        check_24(weight)
    except ValueError:
        return False
    return True


def sparsify_model_24(model: nn.Module, names=None, cache_dense: bool = False) -> list[str]:
    """Swap every ``nn.Linear`` whose weight is exactly 2:4 along its input dim (optionally
    only those in ``names``) for a :class:`Sparse24Linear`, in place. Returns the swapped
    module names. The model class itself is untouched (module swap after the fact)."""
    wanted = None if names is None else set(names)
    swapped = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or (wanted is not None and name not in wanted):
            continue
        if module.in_features % 4 != 0 or not is_24(module.weight.detach()):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Sparse24Linear.from_dense(module, cache_dense=cache_dense))
        swapped.append(name)
    return swapped
