"""Activation-sparsity methods (``--activation``): one record each, in ``ACTIVATION_METHODS``.

A record says where its method sparsifies (`sparsekit.activation.plan` applies it to a model)
and what weighs an input's importance (`weigh`: a per-channel scale on |x|, or per-channel
weights that turn one pooled threshold into channel thresholds; neither: |x| itself):

* TEAL: the input of every attention and MLP linear, importance |x_i|.
* WINA: the same sites, importance |x_i| * ||W[:, i]||_2 (the site's linear's column norms).
* CHESS: the inputs of q_proj and o_proj (k and v stay dense: their errors would persist in the
  KV cache; a fused qkv_proj is left dense since q cannot be masked alone) and the FFN
  activation: for gated MLPs the output of the gate activation module, with importance
  |a_i| * E|up_i| and channel thresholds tau / E|up_i|; for plain MLPs (OPT) the input of fc2.

Adding a method: its record (and weigh function) and one line in the tuple below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsekit.activation.sketch import ActivationSketch
from sparsekit.activation.thresholds import column_norms
from sparsekit.errors import UsageError
from sparsekit.registry import Plugin, Registry

__all__ = ["ACTIVATION_METHODS", "ActivationMethod", "Weights"]

Weights = tuple["torch.Tensor | None", "torch.Tensor | None"]   # (scale, channel weights)
# (model, site of the plan, sketches by point, given column norms or None) -> weights
Weigh = Callable[[nn.Module, Any, Mapping[str, ActivationSketch], "Mapping[str, torch.Tensor] | None"], Weights]


@dataclass(frozen=True)
class ActivationMethod(Plugin):
    attn_in: tuple[str, ...] | None = None   # attention-input linears sparsified, by leaf (None: all)
    mlp_in: bool = True                      # the inputs of the MLP's first linears (gate/up, fc1)
    ffn_activation: bool = False             # a gated MLP's gate activation output instead of down_proj's input
    weigh: Weigh | None = None               # importance weights of a site (None: |x|)


def _linear_weight(model: nn.Module, name: str) -> torch.Tensor:
    w = getattr(model.get_submodule(name), "weight", None)
    if not isinstance(w, torch.Tensor):
        raise UsageError(f"WINA needs the weight of {name} to compute its column norms; pass them "
                         "explicitly (norms=...) for modules without a dense weight")
    return w


def _wina(model, site, sketches, norms) -> Weights:
    """Column norms of the site's linear: from the model's current (final, possibly pruned)
    weights unless given in ``norms`` (site name -> [in_features])."""
    scale = (norms or {}).get(site.name)
    if scale is None:
        scale = column_norms(_linear_weight(model, site.linear or site.name))
    return scale, None


def _chess(model, site, sketches, norms) -> Weights:
    """The mean |up_proj output| of each channel, for the gate-activation site of a gated MLP."""
    if site.mu_point is None:
        return None, None
    if site.mu_point not in sketches:
        raise UsageError(f"no activation statistics for {site.mu_point} (CHESS needs the mean "
                         "|up_proj output|): calibrate again with activation statistics")
    return None, sketches[site.mu_point].mean_abs


ACTIVATION_METHODS: Registry[ActivationMethod] = Registry("activation method", "--activation", (
    ActivationMethod("teal", "one magnitude threshold per linear input"),
    ActivationMethod("chess", "channel-wise thresholds on the FFN activation, and the q_proj/o_proj inputs",
                     attn_in=("q_proj",), mlp_in=False, ffn_activation=True, weigh=_chess),
    ActivationMethod("wina", "|x_i| x ||W[:, i]||, for every sparsified linear", weigh=_wina),
))
