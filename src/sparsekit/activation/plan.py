"""Where a method sparsifies in a model, and which activations must be sketched for it (model
structure only, no statistics).

A *site* is a module the runtime wraps (`sparsekit.runtime.act_sparse.ActSparse`); a *point* is
an activation tensor a sketch is collected on. Linears that read the same tensor share one
point, named after the first of them (q/k/v -> q_proj, gate/up -> gate_proj), like the
calibration statistics file. Which sites a method takes is its record in
`sparsekit.activation.methods`; linears of other names (MoE experts, unknown architectures) are
not sparsified and are listed in ``Plan.skipped``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from sparsekit.activation.methods import ACTIVATION_METHODS
from sparsekit.anatomy import ACT_NAMES, ATTN_IN, ATTN_OUT, MLP_IN, MLP_OUT, ROLE_LEAVES, ROLES, decoder_layers, \
    layer_linears, linear_role
from sparsekit.errors import UsageError

__all__ = ["ROLES", "Plan", "Point", "Site", "calibration_points", "plan_activation"]


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
    entry = ACTIVATION_METHODS.get_entry(method)
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
            order = ROLE_LEAVES[role]
            _, key_rel, key_lin = _first(members, order)
            key = prefix + key_rel
            point = Point(key, key, "input", int(key_lin.in_features))
            for leaf, rel, lin in sorted(members, key=lambda m: order.index(m[0])):
                full = prefix + rel
                if role == "attn_in" and entry.attn_in is not None and leaf not in entry.attn_in:
                    continue
                if role == "mlp_in" and not entry.mlp_in:
                    continue
                if role == "mlp_out" and entry.ffn_activation:
                    act = _gate_activation(layer, parent, parts, prefix, i, lin, method)
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


def _gate_activation(layer: nn.Module, parent: str, parts: dict, prefix: str, i: int,
                     down: nn.Module, method: str) -> tuple[Site, dict[str, Point]] | None:
    """The site on the gate activation of a gated MLP, with the mean |up output| point that
    weighs it (None for a plain MLP: its fc2 input is the site)."""
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
        raise UsageError(f"{method} needs the gate activation module of {prefix}{parent or 'layer'} "
                         f"(one of {', '.join(ACT_NAMES)}); this architecture is not supported by {method}")
    act_full = f"{prefix}{parent + '.' if parent else ''}{act_name}"
    act = Point(act_full, act_full, "output", inter)
    site = Site(act_full, "output", "mlp_act", i, act_full, up_params + _params(down), mu_point=mu.key)
    return site, {act.key: act, mu.key: mu}


def calibration_points(model: nn.Module, methods=None) -> dict[str, Point]:
    """Union of the points of `methods`: what `sparsekit calibrate` sketches so that any method
    and any target can be set later."""
    points: dict[str, Point] = {}
    for method in ACTIVATION_METHODS if methods is None else methods:
        points.update(plan_activation(model, method).points)
    return points
