"""Plots for summaries: PNG files (matplotlib, an optional extra: ``pip install 'sparsekit[plots]'``)
and text bar charts for the terminal (always available). Pure rendering: values in, files or text out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from sparsekit.errors import UsageError

__all__ = ["bar_png", "lines_png", "text_bars"]

BAR = "█"
PARTS = " ▏▎▍▌▋▊▉"


def text_bars(labels: Sequence[str], values: Sequence[float], *, width: int = 40, fmt: str = "{:.2%}",
              lo: float | None = None, hi: float | None = None) -> str:
    """One line per label: the label, a bar of length proportional to the value (between ``lo``
    and ``hi``, default 0 and the largest value) and the value formatted by ``fmt``."""
    if len(labels) != len(values):
        raise ValueError("text_bars needs one value per label")
    if not values:
        return ""
    lo = 0.0 if lo is None else lo
    hi = max(values) if hi is None else hi
    span = hi - lo if hi > lo else 1.0
    pad = max(len(str(label)) for label in labels)
    lines = []
    for label, value in zip(labels, values):
        cells = max(0.0, min(1.0, (value - lo) / span)) * width
        full, part = int(cells), int((cells - int(cells)) * (len(PARTS) - 1))
        bar = BAR * full + (PARTS[part].strip() if full < width else "")
        lines.append(f"{str(label).ljust(pad)} {bar.ljust(width)} {fmt.format(value)}")
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plots need matplotlib: pip install 'sparsekit[plots]' (or matplotlib)") from None
    return plt


def lines_png(path: str | Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str,
              ylabel: str, title: str = "", logy: bool = False) -> Path:
    """A line plot with one line (and markers) per series ``name: (xs, ys)``, written as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def bar_png(path: str | Path, labels: Sequence[str], values: Sequence[float], *, ylabel: str, title: str = "",
            hline: float | None = None) -> Path:
    """A bar chart (one bar per label, e.g. a per-layer sparsity), with an optional horizontal line
    (e.g. the target), written as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(labels)), 4), dpi=120)
    ax.bar(range(len(values)), list(values))
    ax.set_xticks(range(len(labels)), [str(label) for label in labels], rotation=90 if len(labels) > 12 else 0)
    ax.set_ylabel(ylabel)
    if hline is not None:
        ax.axhline(hline, color="black", linewidth=1, linestyle="--")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
