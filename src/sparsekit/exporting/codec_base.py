"""The `Codec` record: everything one export format knows, so the writer, the loader and
``describe`` need no branch per format.

A codec stores each pruned linear layer ``<prefix>`` as its own tensors ``<prefix>.<part>``
(its ``parts``): ``encode`` makes them from the dense weight, ``build`` turns them back into the
module that runs the layer at load time, and ``measure`` reads the facts ``sparsekit info``
shows. A codec that is not ``compressed`` writes a plain checkpoint (its part is ``weight``):
it loads with an ordinary ``from_pretrained``, and its layers are found through
``sparsekit.json`` rather than by their parts.

``encode`` raises `Unencodable` for a weight the format cannot store as it is (the writer
lists every such layer in one refusal, ``refusal``); ``build`` raises `DecodeError` for stored
parts it cannot turn into a module (the loader adds the directory to the message).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import nn

from sparsekit.registry import Plugin

__all__ = ["Codec", "DecodeError", "LayerFacts", "StoredLayer", "Unencodable"]


class Unencodable(ValueError):
    """A weight the format cannot store as it is; the message is the short reason shown next to
    the layer name in the refusal (e.g. "3 groups")."""


class DecodeError(ValueError):
    """Stored parts that cannot become the layer's module; the message names the layer (it starts
    with the prefix) and the fix."""


class LayerFacts(NamedTuple):
    """What ``describe`` needs of one stored layer (its stored bytes are counted generically)."""
    kept: int            # weights stored (a kept slot holding an explicit zero counts)
    numel: int           # elements of the dense weight
    dtype: torch.dtype   # the dtype of the stored values


class StoredLayer(Protocol):
    """One stored layer as ``measure`` reads it, without loading more than it asks for."""
    prefix: str

    def tensor(self, part: str) -> torch.Tensor: ...

    def dtype(self, part: str) -> torch.dtype: ...


Encode = Callable[[str, torch.Tensor], dict[str, torch.Tensor]]
Build = Callable[[str, dict[str, torch.Tensor], nn.Linear], nn.Module]
Measure = Callable[[StoredLayer], LayerFacts]


@dataclass(frozen=True)
class Codec(Plugin):
    """An export format. ``help`` is its one-line description in ``--format``'s help."""
    ct_format: str = ""               # the compressed-tensors sparsity format name (config block, sparsekit.json)
    compressed: bool = True           # False: a plain checkpoint, no config block, nothing to build at load
    structure: str | None = None      # sparsity_structure of the config block; None: "2:4" if the recipe pruned 2:4,
                                      # else "unstructured"
    parts: tuple[str, ...] = ()       # what encode writes per layer: "<prefix>.<part>"
    marks: tuple[str, ...] = ()       # the parts whose presence marks a stored layer (default: all of parts)
    unread: tuple[str, ...] = ()      # parts build does without (may be absent; never read at load)
    encode: Encode | None = None      # (prefix, dense weight) -> {"<prefix>.<part>": tensor}; raises Unencodable
    build: Build | None = None        # (prefix, {part: tensor}, meta-device nn.Linear) -> the module to run;
                                      # raises DecodeError. None: the stored tensors load as they are
    measure: Measure | None = None    # one stored layer -> LayerFacts
    refusal: str = "{count} targeted layer(s) cannot be exported as {name}: {layers}"
    # ^ the message for layers encode refused: {count}, {name} and {layers} ("a (why), b (why) and 3 more")

    def __post_init__(self) -> None:
        if not self.parts or self.encode is None or self.measure is None:
            raise TypeError(f"export format {self.name!r} needs parts, encode and measure")
        if self.compressed and self.build is None:
            raise TypeError(f"export format {self.name!r} is compressed, so it needs build")
        if not set(self.marks) <= set(self.parts) or not set(self.unread) <= set(self.parts):
            raise TypeError(f"export format {self.name!r}: marks and unread must be parts")

    @property
    def layer_marks(self) -> tuple[str, ...]:
        return self.marks or self.parts

    @property
    def needed_parts(self) -> tuple[str, ...]:
        """The parts build reads: every part except ``unread``."""
        return tuple(p for p in self.parts if p not in self.unread)

    def sparsity_structure(self, recipe: dict) -> str:
        if self.structure is not None:
            return self.structure
        return "2:4" if recipe.get("pattern") == "2:4" else "unstructured"
