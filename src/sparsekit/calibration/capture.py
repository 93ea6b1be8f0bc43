"""Capture what every decoder layer is called with, without running the layers.

Each layer's `forward` is temporarily replaced by a recorder that stores its call arguments and
passes the hidden states through unchanged, so one cheap forward of the model (embeddings and
mask/rotary preparation only) yields the first layer's input and every layer's own keyword
arguments. Layers may get different arguments: Gemma-3 gives sliding-window layers another
attention mask and other rotary embeddings than full-attention layers.

Calibration windows have no padding and equal length, so a layer's arguments depend only on the
batch size: they are captured once per batch size and reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sparsekit.anatomy import decoder_layers, model_device

_DROP = ("past_key_value", "past_key_values", "layer_past")


class _Stop(Exception):
    pass


@dataclass
class LayerCalls:
    """Inputs of the first decoder layer, per batch, and each layer's call arguments."""
    hidden: list[torch.Tensor]                       # per batch: [b, T, hidden]
    args: dict[int, list[tuple[tuple, dict]]] = field(default_factory=dict)  # batch size -> per layer (args, kwargs)

    def call_args(self, batch: int, layer: int) -> tuple[tuple, dict]:
        return self.args[self.hidden[batch].shape[0]][layer]


def map_tensors(obj, fn):
    """Apply fn to every tensor inside nested tuples/lists/dicts."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_tensors(x, fn) for x in obj)
    if isinstance(obj, list):
        return [map_tensors(x, fn) for x in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def layer_output(out) -> torch.Tensor:
    """Hidden states from a decoder layer's return value (a tensor, or a tuple on older transformers)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def drop_plain_causal_mask(kwargs: dict, model: nn.Module) -> dict:
    """With SDPA attention, an explicit boolean mask that is exactly causal (e.g. Gemma-3's
    sliding-window mask when the window covers the whole sequence) is replaced by None, which
    SDPA computes as `is_causal` on its fast path: the same result, several times faster on CPU.
    Only for SDPA: eager attention reads None as "no mask at all"."""
    mask = kwargs.get("attention_mask")
    if (getattr(model.config, "_attn_implementation", None) != "sdpa" or not isinstance(mask, torch.Tensor)
            or mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[-1] != mask.shape[-2]):
        return kwargs
    t = mask.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=mask.device).tril_()
    if torch.equal(mask, causal.expand_as(mask)):
        kwargs = dict(kwargs, attention_mask=None)
    return kwargs


def _returns_tuple() -> bool:
    import transformers

    return int(transformers.__version__.split(".")[0]) < 5


@torch.no_grad()
def capture_layer_calls(model: nn.Module, batches: list[torch.Tensor],
                        store: torch.device | str = "cpu") -> LayerCalls:
    """Run `model` on each batch of token ids with recorders in place of its decoder layers.

    Hidden states are kept on `store` (CPU keeps accelerator memory free for one layer at a time).
    """
    _, layers = decoder_layers(model)
    calls = LayerCalls(hidden=[])
    as_tuple = _returns_tuple()
    recording: list[tuple[tuple, dict]] = []
    state = {"full": False}

    def recorder(index: int):
        def forward(hidden_states, *args, **kwargs):
            if index == 0:
                calls.hidden.append(hidden_states.detach().to(store))
            if state["full"]:
                kwargs = {k: v for k, v in kwargs.items() if k not in _DROP}
                kwargs["use_cache"] = False
                recording.append((args, drop_plain_causal_mask(kwargs, model)))
            if index == len(layers) - 1 or not state["full"]:
                raise _Stop
            return (hidden_states,) if as_tuple else hidden_states
        return forward

    saved = [layer.__dict__.get("forward") for layer in layers]
    try:
        for i, layer in enumerate(layers):
            layer.forward = recorder(i)
        device = model_device(model)
        for ids in batches:
            state["full"] = ids.shape[0] not in calls.args
            recording.clear()
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except _Stop:
                pass
            if state["full"]:
                if len(recording) != len(layers):
                    raise RuntimeError(f"captured {len(recording)} of {len(layers)} decoder layer calls")
                calls.args[ids.shape[0]] = list(recording)
    finally:
        for layer, old in zip(layers, saved):
            if old is None:
                del layer.forward
            else:
                layer.forward = old
    return calls
