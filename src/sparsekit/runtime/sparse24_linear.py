"""``Sparse24Linear``: an inference-only drop-in for ``nn.Linear`` whose weight is exactly 2:4
along its input dim, kept only in sparsekit's panel layout (9/16 of the dense bytes in 16-bit),
and the model-level swaps ``sparsify_model_24`` / ``densify_model_24``.

Every call goes through one custom op, ``sparsekit::s24_linear``, so ``torch.compile`` sees a
single opaque node (its fake implementation gives the output shape) and a CUDA graph captures
whatever kernel the op launched. Inside the op the path is chosen per call from host-side
facts (:mod:`sparsekit.runtime.dispatch24`): sparsekit's Triton kernels, or cuSPARSELt for
the M ranges where it was measured faster *and* the layer holds a cuSPARSELt copy. The weight
is never decompressed to multiply it on the GPU. On CPU the op is the plain-torch reference:
decompress and ``F.linear``, which gives exactly the dense layer's result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsekit.anatomy import CompressedLinear, set_submodule
from sparsekit.kernels import cusparselt
from sparsekit.kernels.panel24 import Panel24, from_panels, to_panels
from sparsekit.kernels.sparse24 import Packed24, check_24, pack_24, unpack_24
from sparsekit.runtime import dispatch24


def _capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


def _dense(values: torch.Tensor, meta: torch.Tensor, in_features: int) -> torch.Tensor:
    panels = Panel24(values, meta, in_features)
    if values.is_cuda:
        from sparsekit.kernels.sparse24_triton import sparse24_decompress

        return sparse24_decompress(values, meta, in_features)
    return unpack_24(from_panels(panels))


@torch.library.custom_op("sparsekit::s24_linear", mutates_args=())
def s24_linear(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, in_features: int,
               bias: torch.Tensor | None, cslt: torch.Tensor | None) -> torch.Tensor:
    """``y = x @ W.T (+ bias)`` for 2-D x [M, K], W in panel layout; y [M, N] in x's dtype."""
    backend, cfg = dispatch24.choose(x.shape[0], x.dtype, _capability(x.device))
    if backend == dispatch24.CPU_BACKEND:
        w = _dense(values, meta, in_features).to(x.dtype)
        return F.linear(x, w, None if bias is None else bias.to(x.dtype))
    xw = x.to(values.dtype)  # no-op in the usual case (activations in the weights' dtype)
    if backend == "cusparselt" and cslt is not None:
        y = cusparselt.linear(xw, cslt, values.shape[1], bias)
    else:
        from sparsekit.kernels.sparse24_triton import sparse24_mm

        y = sparse24_mm(xw, values, meta, in_features, bias, cfg)
    return y.to(x.dtype)


@s24_linear.register_fake
def _(x, values, meta, in_features, bias, cslt):
    return x.new_empty((x.shape[0], values.shape[1]))


class Sparse24Linear(CompressedLinear):
    """Linear layer with an exactly-2:4 weight [out, in], stored in panel layout.

    Buffers: ``values`` [P, N, 2*PG] (model dtype), ``meta`` int16 [P, N, PG/4], ``bias``
    (or None); they follow ``.to(device)`` / ``.half()``. An optional cuSPARSELt copy
    (:meth:`enable_cusparselt`) is a plain attribute, dropped when the buffers move."""

    def __init__(self, values: torch.Tensor, meta: torch.Tensor, in_features: int,
                 bias: torch.Tensor | None = None):
        super().__init__()
        if values.dim() != 3 or meta.dim() != 3 or meta.dtype != torch.int16 \
                or meta.shape[:2] != values.shape[:2] or values.shape[2] != 8 * meta.shape[2]:
            raise ValueError("values must be [P, N, 2*PG] and meta int16 [P, N, PG/4] "
                             "(the panel layout of sparsekit.kernels.panel24)")
        if values.shape[0] * values.shape[2] * 2 < in_features:
            raise ValueError(f"panels of shape {tuple(values.shape)} hold fewer than "
                             f"in_features={in_features} columns")
        self.in_features = in_features
        self.out_features = values.shape[1]
        self.register_buffer("values", values.contiguous())
        self.register_buffer("meta", meta.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._cslt: torch.Tensor | None = None
        self._cslt_key = None

    @classmethod
    def from_packed(cls, packed: Packed24, bias: torch.Tensor | None = None,
                    panel_groups: int = dispatch24.PANEL_GROUPS) -> Sparse24Linear:
        p = to_panels(packed, panel_groups)
        return cls(p.values, p.meta, packed.in_features, bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear,
                   panel_groups: int = dispatch24.PANEL_GROUPS) -> Sparse24Linear:
        """Pack ``linear.weight``; raises ValueError if it is not exactly 2:4 along in."""
        w = linear.weight.detach()
        check_24(w)
        return cls.from_packed(pack_24(w, check=False), linear.bias, panel_groups)

    def panels(self) -> Panel24:
        return Panel24(self.values, self.meta, self.in_features)

    def packed(self) -> Packed24:
        return from_panels(self.panels())

    def to_dense_weight(self) -> torch.Tensor:
        return unpack_24(self.packed())

    def to_linear(self) -> nn.Linear:
        """The equivalent dense ``nn.Linear`` (zeros in the pruned positions)."""
        w = _dense(self.values, self.meta, self.in_features)
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin.requires_grad_(False)

    def enable_cusparselt(self) -> bool:
        """Build the cuSPARSELt copy of the weight (9/16 of dense, in addition to the panel
        layout) so that the M ranges dispatched to "cusparselt" use it. Returns False (and
        changes nothing) off CUDA, for other dtypes, or for dims that are not multiples of 16."""
        v = self.values
        if not (cusparselt.available() and v.is_cuda and v.dtype in (torch.float16, torch.bfloat16)
                and self.in_features % 16 == 0 and self.out_features % 16 == 0):
            return False
        self._cslt = cusparselt.compress(_dense(v, self.meta, self.in_features))
        self._cslt_key = (v.device, v.dtype)
        return True

    def cusparselt_bytes(self) -> int:
        return 0 if self._cslt is None else self._cslt.numel() * self._cslt.element_size()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, layout=2:4 panels of "
                f"{self.values.shape[2] // 2} groups"
                + (", cuSPARSELt copy" if self._cslt is not None else ""))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        cslt = self._cslt if self._cslt_key == (self.values.device, self.values.dtype) else None
        y = s24_linear(x.reshape(-1, self.in_features), self.values, self.meta,
                       self.in_features, self.bias, cslt)
        return y.reshape(*lead, self.out_features)


def is_24(weight: torch.Tensor) -> bool:
    try:
        check_24(weight)
    except ValueError:
        return False
    return True


def sparsify_model_24(model: nn.Module, names=None, cusparselt: bool = False,
                      panel_groups: int = dispatch24.PANEL_GROUPS) -> list[str]:
    """Swap every ``nn.Linear`` whose weight is exactly 2:4 along its input dim (optionally
    only those in ``names``) for a :class:`Sparse24Linear`, in place; returns the swapped
    names. ``cusparselt=True`` also builds cuSPARSELt copies (CUDA fp16/bf16 only): faster
    prefill where the dispatch table says so, at 9/16 of the dense bytes more memory."""
    wanted = None if names is None else set(names)
    swapped = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or (wanted is not None and name not in wanted):
            continue
        if module.in_features % 4 != 0 or not is_24(module.weight.detach()):
            continue
        new = Sparse24Linear.from_dense(module, panel_groups)
        if cusparselt:
            new.enable_cusparselt()
        set_submodule(model, name, new)
        swapped.append(name)
    return swapped


def densify_model_24(model: nn.Module) -> list[str]:
    """Inverse of :func:`sparsify_model_24`: every :class:`Sparse24Linear` becomes the dense
    ``nn.Linear`` with zeros in the pruned positions (its "dense twin"); returns the names."""
    names = [n for n, m in model.named_modules() if isinstance(m, Sparse24Linear)]
    for name in names:
        set_submodule(model, name, model.get_submodule(name).to_linear())
    return names
