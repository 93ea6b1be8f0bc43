"""Model anatomy: where a causal LM keeps its decoder layers, which linears are inside them and
what role each plays, which models sparsekit can prune, and the base classes of the runtime
modules swapped in after loading (so they are recognised by type, never by class name).

Everything here reads a plain transformers model; nothing loads, writes or prunes.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from sparsekit.errors import UsageError

__all__ = [
    "ATTN_IN", "ATTN_OUT", "ACT_NAMES", "DEFAULT_IGNORE", "MLP_IN", "MLP_OUT", "ROLE_LEAVES", "ROLES", "TESTED_ARCHITECTURES",
    "CompressedLinear", "Wrapper", "check_prunable_config", "check_prunable_model", "context_length",
    "decoder_layers", "is_moe", "layer_index", "layer_linears", "layer_modules", "linear_kind", "linear_role", "model_device",
    "parameter_count", "prunable_linears", "set_submodule", "unsupported_weights", "unwrap",
]

# Architectures whose layer discovery is covered by the test suite (tiny random models).
TESTED_ARCHITECTURES = ("Llama", "Mistral", "Qwen2", "Qwen3", "Gemma3 (text)", "OPT", "Phi-3")
# Where decoder layers live, by attribute path, in the common causal-LM families.
LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers",
               "model.language_model.layers", "transformer.blocks")
# Modules never pruned by default: embeddings and the output head.
DEFAULT_IGNORE = r"(^|\.)(lm_head|embed_tokens|embed_out|wte|wpe|embed_positions)$"

# Linear roles inside a decoder layer, by the leaf names the HF families use (Llama, Mistral,
# Qwen, Gemma-3: q/k/v/o_proj, gate/up/down_proj; OPT: q/k/v/out_proj, fc1/fc2; Phi-3: qkv_proj,
# gate_up_proj). Within a role the first present name reads the input the others share.
ATTN_IN = ("q_proj", "qkv_proj", "k_proj", "v_proj")
ATTN_OUT = ("o_proj", "out_proj")
MLP_IN = ("gate_proj", "gate_up_proj", "up_proj", "fc1")
MLP_OUT = ("down_proj", "fc2")
ACT_NAMES = ("act_fn", "activation_fn", "act")          # the MLP's gate activation module
ROLES = ("attn_in", "attn_out", "mlp_in", "mlp_act", "mlp_out")   # forward order within a block
ROLE_LEAVES = {"attn_in": ATTN_IN, "attn_out": ATTN_OUT, "mlp_in": MLP_IN, "mlp_out": MLP_OUT}


# --- runtime module bases ------------------------------------------------------------------------
class Wrapper(nn.Module):
    """Base of runtime modules that wrap another module, held as ``.inner`` (activation
    sparsity). Names inside a wrapper are reported as the checkpoint names them (the wrapper's
    own name), and `unwrap` gives the wrapped module back."""

    inner: nn.Module


class CompressedLinear(nn.Module):
    """Base of runtime linears that keep no dense ``.weight`` (2:4 sparse linears): they have
    ``in_features``, ``out_features`` and ``to_dense_weight()``."""

    in_features: int
    out_features: int

    def to_dense_weight(self) -> torch.Tensor:  # pragma: no cover - every subclass defines it
        raise NotImplementedError


def unwrap(module: nn.Module) -> nn.Module:
    """The module a runtime wrapper wraps (through any number of wrappers), else the module."""
    while isinstance(module, Wrapper):
        module = module.inner
    return module


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` (the model class never knows)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --- decoder layers and their linears ------------------------------------------------------------
def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder layers of a causal LM as (dotted path, ModuleList)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for path in LAYER_PATHS:
        layers = _get(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return path, layers
    candidates = [(name, m) for name, m in model.named_modules()
                  if isinstance(m, nn.ModuleList) and len(m) > 0
                  and (n is None or len(m) == n) and len({type(x) for x in m}) == 1]
    if candidates:
        return max(candidates, key=lambda c: sum(p.numel() for p in c[1].parameters()))
    raise UsageError(f"unsupported architecture {type(model).__name__}: no list of decoder layers "
                     f"found; supported and tested: {', '.join(TESTED_ARCHITECTURES)}")


def layer_index(path: str, name: str) -> int | None:
    """'model.layers.3.mlp.up_proj' -> 3 (for the decoder-layer path 'model.layers'), else None."""
    match = re.match(re.escape(path) + r"\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def _checkpoint_name(name: str, wrappers: set[str]) -> str:
    """The name the checkpoint uses for a module found at ``name``: a module inside a runtime
    wrapper is named as the wrapper is (``q_proj``, not ``q_proj.inner``)."""
    while True:
        parent, _, leaf = name.rpartition(".")
        if leaf == "inner" and parent in wrappers:
            name = parent
        else:
            return name


def layer_modules(layer: nn.Module, kind: type) -> dict[str, nn.Module]:
    """The modules of type ``kind`` inside one decoder layer, by name relative to the layer (a
    module inside a runtime wrapper is named as the wrapper is: the name the checkpoint uses)."""
    modules = list(layer.named_modules())
    wrappers = {name for name, m in modules if isinstance(m, Wrapper)}
    return {_checkpoint_name(name, wrappers): m for name, m in modules if isinstance(m, kind)}


def layer_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """The nn.Linear modules of one decoder layer (`layer_modules`)."""
    return layer_modules(layer, nn.Linear)


def linear_role(leaf: str) -> str | None:
    """attn_in, attn_out, mlp_in or mlp_out for a linear's leaf name (None: unknown name)."""
    for role, names in ROLE_LEAVES.items():
        if leaf in names:
            return role
    return None


def prunable_linears(model: nn.Module, targets: str | None = None,
                     ignore: str | None = None) -> dict[str, nn.Linear]:
    """Full names of the linear layers inside decoder layers selected for pruning.

    `targets` and `ignore` are regular expressions searched in the full module name.
    Embeddings and lm_head are outside the decoder layers, so they are never selected.
    """
    path, layers = decoder_layers(model)
    found = {}
    for i, layer in enumerate(layers):
        for name, lin in layer_linears(layer).items():
            full = f"{path}.{i}.{name}"
            if targets and not re.search(targets, full):
                continue
            if ignore and re.search(ignore, full):
                continue
            found[full] = lin
    return found


def linear_kind(name: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'self_attn.q_proj' (the layer type, across layers)."""
    return re.sub(r"^.*?\.\d+\.", "", name)


# --- what can be pruned --------------------------------------------------------------------------
# Config attributes that only mixture-of-experts models set (Mixtral, Qwen2/3-MoE, DeepSeek, ...).
MOE_ATTRS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok")


def is_moe(config) -> bool:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return any(isinstance(getattr(config, a, None), int) and getattr(config, a) > 0 for a in MOE_ATTRS)


def check_prunable_config(config) -> None:
    """Refuse, before any weight is loaded, models whose weights sparsekit cannot prune yet."""
    if is_moe(config):
        arch = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
        raise UsageError(f"{arch} is a mixture-of-experts model, and sparsekit does not prune experts yet: "
                         "use a dense model (Llama, Mistral, Qwen2/3, Gemma-3, OPT, Phi-3, ...)")


def unsupported_weights(model: nn.Module) -> list[str]:
    """Matrices inside decoder layers that are not nn.Linear weights (fused experts, Conv1D, ...):
    a run that prunes "every linear" would silently leave them dense."""
    path, layers = decoder_layers(model)
    found = []
    for i, layer in enumerate(layers):
        owned = {id(m.weight) for m in layer.modules() if isinstance(m, nn.Linear)}
        for name, p in layer.named_parameters():
            if p.dim() >= 2 and id(p) not in owned:
                found.append(f"{path}.{i}.{name}")
    return found


def check_prunable_model(model: nn.Module) -> None:
    bad = unsupported_weights(model)
    if bad:
        module = model.get_submodule(bad[0].rsplit(".", 1)[0])
        raise UsageError(f"{len(bad)} weight matrices inside the decoder layers are not nn.Linear (e.g. {bad[0]}, "
                         f"a {type(module).__name__}), which sparsekit cannot prune yet: use a model whose "
                         "decoder layers use nn.Linear")


# --- sizes and places ----------------------------------------------------------------------------
def parameter_count(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


def model_device(model: nn.Module) -> torch.device:
    """Where inputs go: the device of the input embeddings (works with accelerate device maps)."""
    return model.get_input_embeddings().weight.device


def context_length(model_or_config) -> int | None:
    config = getattr(model_or_config, "config", model_or_config)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
