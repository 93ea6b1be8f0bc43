"""Where each method sparsifies, and which activations must be sketched for it (model structure
only, no statistics).

A *site* is a module the runtime wraps (`sparsekit.runtime.act_sparse.ActSparse`); a *point* is
an activation tensor a sketch is collected on. Linears that read the same tensor share one
point, named after the first of them (q/k/v -> q_proj, gate/up -> gate_proj), like the
calibration statistics file.

Sites per method, in every decoder layer (names are the HF module names; Llama, Mistral, Qwen,
Gemma-3: q/k/v/o_proj, gate/up/down_proj; OPT: q/k/v/out_proj, fc1/fc2; Phi-3: qkv_proj,
gate_up_proj):

* TEAL and WINA: the input of every attention and MLP linear (q, k, v, o, gate, up, down).
* CHESS: the inputs of q_proj and o_proj (k and v stay dense: their errors would persist in the
  KV cache; a fused qkv_proj is left dense since q cannot be masked alone), and the FFN
  activation: for gated MLPs the output of the gate activation module (``act_fn``), whose zeros
  make down_proj's input zero and let a kernel skip up rows and down columns; for plain MLPs
  (OPT) the input of fc2, which is that activation.

Linears of other names (MoE experts, unknown architectures) are not sparsified; they are listed
in ``Plan.skipped``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from sparsekit.anatomy import ACT_NAMES, ATTN_IN, ATTN_OUT, MLP_IN, MLP_OUT, ROLES, decoder_layers, layer_linears, \
    linear_role
from sparsekit.errors import UsageError

__all__ = ["METHODS", "ROLES", "Plan", "Point", "Site", "calibration_points", "plan_activation"]

METHODS = ("teal", "chess", "wina")


@dataclass(frozen=True)
class Point:
    """An activation to sketch: the input or output of ``module`` (full name)."""
    key: str
    module: str
    where: str                      # "input" | "output"
    channels: int
    histogram: bool = True          # False: only max and mean |x| (CHESS's mu)
    out_slice: tuple[int, int] | None = None   # channels [a, b) of the output (fused gate_up)


@dataclass(frozen=True)
class Site:
    """A module the runtime wraps, with what its thresholds are computed from."""
    name: str                       # full module name
    where: str                      # "input" | "output"
    role: str                       # attn_in | attn_out | mlp_in | mlp_act | mlp_out
    layer: int
    point: str                      # key of the sketched activation it masks
    params: int                     # weights a zeroed entry lets a kernel skip (greedy weights)
    mu_point: str | None = None     # CHESS gated MLP: key of the mean |up output| point
    linear: str | None = None       # the linear whose column norms WINA uses (input sites)


@dataclass
class Plan:
    method: str
    sites: list[Site]
    points: dict[str, Point]
    skipped: list[str] = field(default_factory=list)

    def layer_sites(self, layer: int) -> list[Site]:
        return [s for s in self.sites if s.layer == layer]


def _params(lin: nn.Module) -> int:
    return int(lin.in_features) * int(lin.out_features)


def _layer_parts(layer: nn.Module) -> dict:
    """Linears by role and parent, and the gate activation of the MLP, of one decoder layer."""
    linears = layer_linears(layer)  # a wrapped linear is named as its wrapper (the checkpoint name)
    parts: dict = {"groups": {}, "skipped": []}
    for rel, lin in linears.items():
        parent, _, leaf = rel.rpartition(".")
        role = linear_role(leaf)
        if role is None:
            parts["skipped"].append(rel)
            continue
        parts["groups"].setdefault((role, parent), []).append((leaf, rel, lin))
    return parts


def _first(members, order) -> tuple[str, str, nn.Module]:
    return min(members, key=lambda m: order.index(m[0]))


def plan_activation(model: nn.Module, method: str) -> Plan:
    """Sites and sketch points of `method` for every decoder layer of `model`."""
    if method not in METHODS:
        raise UsageError(f"unknown --activation {method!r}: use one of {', '.join(METHODS)}")
    path, layers = decoder_layers(model)
    sites: list[Site] = []
    points: dict[str, Point] = {}
    skipped: list[str] = []
    for i, layer in enumerate(layers):
        prefix = f"{path}.{i}."
        parts = _layer_parts(layer)
        skipped += [prefix + r for r in parts["skipped"]]
        groups = sorted(parts["groups"].items(), key=lambda g: ROLES.index(g[0][0]))  # forward order
        for (role, parent), members in groups:
            order = {"attn_in": ATTN_IN, "attn_out": ATTN_OUT, "mlp_in": MLP_IN, "mlp_out": MLP_OUT}[role]
            _, key_rel, key_lin = _first(members, order)
            key = prefix + key_rel
            point = Point(key, key, "input", int(key_lin.in_features))
            for leaf, rel, lin in sorted(members, key=lambda m: order.index(m[0])):
                full = prefix + rel
                if method == "chess":
                    if role == "attn_in" and leaf != "q_proj":
                        continue
                    if role == "mlp_in":
                        continue
                    if role == "mlp_out":
                        act = _chess_act(layer, parent, parts, prefix, i, lin)
                        if act is not None:
                            site, act_points = act
                            sites.append(site)
                            points.update(act_points)
                            continue
                points[key] = point
                sites.append(Site(full, "input", role, i, key, _params(lin), linear=full))
    if not sites:
        raise UsageError(f"no linear layer of {type(model).__name__} can be activation-sparsified by "
                         f"{method}: supported names are {', '.join(ATTN_IN + ATTN_OUT + MLP_IN + MLP_OUT)}")
    return Plan(method, sites, points, skipped)


def _chess_act(layer: nn.Module, parent: str, parts: dict, prefix: str, i: int,
               down: nn.Module) -> tuple[Site, dict[str, Point]] | None:
    """CHESS site on the gate activation of a gated MLP (None for a plain MLP: fc2 input)."""
    ups = parts["groups"].get(("mlp_in", parent), [])
    by_leaf = {leaf: (rel, lin) for leaf, rel, lin in ups}
    container = layer.get_submodule(parent) if parent else layer
    act_name = next((n for n in ACT_NAMES if isinstance(getattr(container, n, None), nn.Module)), None)
    inter = int(down.in_features)
    if "up_proj" in by_leaf and "gate_proj" in by_leaf:
        up_rel, up_lin = by_leaf["up_proj"]
        mu = Point(f"{prefix}{up_rel}:output", prefix + up_rel, "output", inter, histogram=False)
        up_params = _params(up_lin)
    elif "gate_up_proj" in by_leaf:
        up_rel, up_lin = by_leaf["gate_up_proj"]
        mu = Point(f"{prefix}{up_rel}:output", prefix + up_rel, "output", inter, histogram=False,
                   out_slice=(inter, 2 * inter))
        up_params = _params(up_lin) // 2
    else:
        return None
    if act_name is None:
        raise UsageError(f"CHESS needs the gate activation module of {prefix}{parent or 'layer'} "
                         f"(one of {', '.join(ACT_NAMES)}); this architecture is not supported by CHESS")
    act_full = f"{prefix}{parent + '.' if parent else ''}{act_name}"
    act = Point(act_full, act_full, "output", inter)
    site = Site(act_full, "output", "mlp_act", i, act_full, up_params + _params(down), mu_point=mu.key)
    return site, {act.key: act, mu.key: mu}


def calibration_points(model: nn.Module, methods=METHODS) -> dict[str, Point]:
    """Union of the points of `methods`: what `sparsekit calibrate` sketches so that any method
    and any target can be set later."""
    points: dict[str, Point] = {}
    for method in methods:
        points.update(plan_activation(model, method).points)
    return points
