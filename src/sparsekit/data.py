"""Text data for calibration and evaluation: named datasets, local files, or the model itself.

A source is one of
- `wikitext2`, `c4`, `ptb`: fetched through `datasets` (needs the hub or a local datasets cache);
- a local `.txt` (one row per line), `.jsonl` / `.json` (a "text" field), `.parquet` ("text" column)
  file, or a folder of such files (read in name order);
- `self`: calibration text sampled from the model itself (no data needed).

Each named dataset follows its reference protocol (SparseGPT / Wanda data utilities):

| source    | evaluation                                   | calibration                                   |
|-----------|----------------------------------------------|-----------------------------------------------|
| wikitext2 | raw test split joined with "\\n\\n"          | train split joined with " ", stream windows  |
| ptb       | test split sentences joined with " "         | train split sentences joined with " ", stream |
| c4        | first 1100 validation documents joined with  | per-document windows from train shard 0       |
|           | " ", truncated to 256 * seqlen tokens         | (`document_windows`; --sampling random only)  |
| local     | rows joined with "\\n\\n"                    | rows joined with "\\n\\n", stream windows     |

The joined text is tokenized once, so the stream carries one BOS, at the very start; windows cut
from it start mid-text. `with_bos` puts BOS first in every window for model families trained to
always see it (`resolve_bos`).

Random windows use Python's `random.Random(seed)` exactly as the reference code does
(`randint(0, len - seqlen - 1)` for a start; `randint(0, ndocs - 1)` for a C4 document), so the
same seed, data and tokenizer give the reference's windows.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import inspect
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from sparsekit.anatomy import model_device
from sparsekit.errors import UsageError
from sparsekit.network import env_true, hub_reachable

NAMED = ("wikitext2", "c4", "ptb")
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
SAMPLING = ("random", "first")
JOIN = "\n\n"  # local files, and the WikiText-2 test split

BOS_MODES = ("auto", "always", "never")
# Model families (model_type prefixes) trained to always see BOS first: `--bos auto` puts BOS at
# the start of every window for them (Gemma's quality collapses without it). Every other model
# follows the published Wanda/SparseGPT protocol: one BOS at the start of the text only, which
# the published Llama numbers need.
ALWAYS_BOS_FAMILIES = ("gemma",)  # gemma, gemma2, gemma3, gemma3_text, ...

C4_EVAL_DOCUMENTS = 1100
C4_EVAL_WINDOWS = 256


@dataclass(frozen=True)
class NamedDataset:
    """Where a named dataset lives on the hub and how its reference protocol joins it."""
    hub_id: str
    config: str | None
    field: str
    eval_split: str
    calibration_split: str
    eval_join: str
    calibration_join: str
    data_files: dict | None = None  # split -> file inside the repository (C4's shards)


DATASETS = {
    "wikitext2": NamedDataset("Salesforce/wikitext", "wikitext-2-raw-v1", "text", "test", "train", "\n\n", " "),
    "ptb": NamedDataset("ptb-text-only/ptb_text_only", "penn_treebank", "sentence", "test", "train", " ", " "),
    "c4": NamedDataset("allenai/c4", None, "text", "validation", "train", " ", " ",
                       {"validation": "en/c4-validation.00000-of-00008.json.gz",
                        "train": "en/c4-train.00000-of-01024.json.gz"}),
}


# ------------------------------------------------------------------------------ BOS handling
def resolve_bos(mode: str, model_type: str, tokenizer) -> bool:
    """Whether every window should start with BOS.

    always: True (UsageError if the tokenizer has no BOS token); never: False; auto: True for
    the families in `ALWAYS_BOS_FAMILIES` (model_type prefix match) when the tokenizer has a
    BOS token, False otherwise (the reference protocol: one BOS at the start of the text).
    """
    if mode not in BOS_MODES:
        raise UsageError(f"unknown --bos {mode!r}: use one of {', '.join(BOS_MODES)}")
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if mode == "always":
        if bos_id is None:
            raise UsageError("--bos always: this tokenizer has no BOS token: pass --bos never")
        return True
    if mode == "never":
        return False
    return bos_id is not None and (model_type or "").lower().startswith(ALWAYS_BOS_FAMILIES)


def with_bos(windows: torch.Tensor, bos_id: int) -> torch.Tensor:
    """A copy of `windows` [n, T] with each window's first token replaced by `bos_id`.

    Same window count and the same scored tokens: a window's first token is never predicted,
    it only becomes context. A window that already starts with BOS is unchanged (no duplicate).
    """
    if bos_id is None:
        raise ValueError("with_bos needs a BOS token id")
    if windows.dim() != 2 or windows.shape[1] < 1:
        raise ValueError(f"with_bos expects windows [n, T] with T >= 1, got {tuple(windows.shape)}")
    out = windows.clone()
    out[:, 0] = int(bos_id)
    return out


def drop_repeated_bos(ids: torch.Tensor, bos_id: int | None) -> torch.Tensor:
    """1-D ids with a run of BOS tokens at position 0 reduced to one (a text that starts with a
    literal BOS token would otherwise get two: the tokenizer adds its own)."""
    if bos_id is None:
        return ids
    k = 0
    while k + 1 < ids.numel() and int(ids[k]) == bos_id and int(ids[k + 1]) == bos_id:
        k += 1
    return ids[k:]


# ------------------------------------------------------------------------ named datasets
_PROBE: dict[str, tuple[float, bool]] = {}
_PROBE_TTL = 60.0


def _offline() -> bool:
    """HF_DATASETS_OFFLINE / HF_HUB_OFFLINE set, or the hub does not answer a 3 s probe (the
    answer is remembered for a minute, so validation and loading probe once)."""
    if env_true("HF_DATASETS_OFFLINE") or env_true("HF_HUB_OFFLINE"):
        return True
    now = time.monotonic()
    hit = _PROBE.get("hub")
    if hit is None or now - hit[0] > _PROBE_TTL:
        hit = (now, hub_reachable())
        _PROBE["hub"] = hit
    return not hit[1]


def datasets_cache_dir() -> Path:
    """The `datasets` cache folder, found as `datasets` finds it (without importing it)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "datasets"
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "huggingface" / "datasets"


def is_cached(name: str) -> bool:
    """Whether the local `datasets` cache holds some prepared version of a named dataset."""
    namespace, _, repo = DATASETS[name].hub_id.rpartition("/")
    folder = datasets_cache_dir() / (f"{namespace}___{repo}" if namespace else repo)
    return folder.is_dir() and any(p.is_dir() for p in folder.glob("*/*/*"))


def _unavailable(name: str, split: str = "test", why: str | None = None) -> UsageError:
    """The data cannot be had offline. ``why``: the options that need the data, when ``name`` is a
    default the user did not choose (so the message says what needs data, not just what failed)."""
    local = "a local .txt/.jsonl/.json/.parquet file or folder"
    instead = f"{local} or --data self (text the model samples itself)" if split == "calibration" else local
    lead = (f"{why} needs {'calibration' if split == 'calibration' else 'evaluation'} text and the default is "
            f"--data {name}, but" if why else f"--data {name}:")
    return UsageError(f"{lead} the Hugging Face hub is not reachable and {name} is not in the local datasets "
                      f"cache: pass {instead} instead")


def _require_named(name: str, split: str = "test", why: str | None = None) -> None:
    """Fail at once, before any model loading, when a named dataset cannot be had."""
    if importlib.util.find_spec("datasets") is None:
        raise UsageError(f"--data {name} needs the `datasets` package: pip install datasets, "
                         "or pass a local .txt/.jsonl/.json/.parquet file")
    if _offline() and not is_cached(name):
        raise _unavailable(name, split, why)


class _Column(Sequence[str]):
    """One text field of a `datasets.Dataset`, read row by row (never all at once)."""

    def __init__(self, ds, field: str):
        self._ds, self._field = ds, field

    def __len__(self) -> int:
        return len(self._ds)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._ds[int(i)][self._field]


def _load_named(name: str, split: str):
    """The `datasets.Dataset` of a named dataset's eval ('test') or calibration split.
    Offline (no hub) it is read from the local cache only, or fails at once."""
    _require_named(name, split)
    import datasets

    spec = DATASETS[name]
    which = spec.eval_split if split == "test" else spec.calibration_split
    offline = _offline()
    saved = datasets.config.HF_HUB_OFFLINE
    try:
        if offline:  # straight to the cache: no retries against an unreachable hub
            datasets.config.HF_HUB_OFFLINE = True
        if spec.data_files is not None:
            return datasets.load_dataset(spec.hub_id, data_files={which: spec.data_files[which]}, split=which)
        return datasets.load_dataset(spec.hub_id, spec.config, split=which)
    except Exception as exc:  # datasets raises many types when offline or on a broken cache
        if offline:
            raise _unavailable(name, split) from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--data {name}: could not load the dataset ({first[:160]}): "
                         "pass a local .txt/.jsonl/.json/.parquet file or folder instead") from None
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def named_documents(name: str, split: str) -> Sequence[str]:
    """The rows (documents, lines or sentences) of a named dataset's split, read lazily.

    For c4 evaluation only the first `C4_EVAL_DOCUMENTS` validation documents."""
    spec = DATASETS[name]
    ds = _load_named(name, split)
    if name == "c4" and split == "test":
        ds = ds.select(range(min(C4_EVAL_DOCUMENTS, len(ds))))
    return _Column(ds, spec.field)


# ---------------------------------------------------------------------------- local files
def _file_rows(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            return path.read_text(encoding="utf-8").splitlines()
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            return [_text_field(r, path) for r in rows]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data = data.get("text", data.get("data", data))
            if isinstance(data, str):
                return [data]
            return [r if isinstance(r, str) else _text_field(r, path) for r in data]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if "text" not in table.column_names:
                raise UsageError(f"{path}: no 'text' column (columns: {', '.join(table.column_names)})")
            return [str(x) for x in table.column("text").to_pylist()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read as {suffix} ({exc})") from None
    raise UsageError(f"{path}: unsupported data file type {suffix!r}: use {', '.join(LOCAL_SUFFIXES)}")


def _text_field(row, path: Path) -> str:
    if isinstance(row, dict) and isinstance(row.get("text"), str):
        return row["text"]
    raise UsageError(f"{path}: every record needs a string 'text' field")


def _local_files(source: str) -> list[Path]:
    """The files a local source reads, checked for existence and type (no contents read)."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in LOCAL_SUFFIXES and p.is_file())
        if not files:
            raise UsageError(f"{source}: folder has no {'/'.join(LOCAL_SUFFIXES)} files")
        return files
    if path.is_file():
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise UsageError(f"{path}: unsupported data file type {path.suffix.lower()!r}: "
                             f"use {', '.join(LOCAL_SUFFIXES)}")
        return [path]
    raise UsageError(f"--data {source}: no such file or folder; use a local file or folder, "
                     f"or one of {', '.join(NAMED)}, self")


# ---------------------------------------------------------------------------- validation
def check_data_request(source: str, split: str = "calibration", sampling: str | None = None,
                       why: str | None = None) -> None:
    """Validate a data request before anything heavy is loaded; raises a one-line UsageError.

    Checks the source name, that a local file or folder exists and has a supported type, the
    sampling mode (and that it fits the source), and for named datasets that `datasets` is
    installed and that the data can be had: the hub answers, or the local cache holds it
    (offline this returns or fails within the 3 s hub probe, never after retries).
    `split` is 'test' (evaluation) or 'calibration'. ``why``: the options that need the data when
    ``source`` is a default the user did not choose (named in the message if it cannot be had).
    A local source with no text in it is refused too.
    """
    _check_form(source, split, sampling)
    if source in NAMED:
        _require_named(source, split, why)
    elif source != "self" and not any(_has_text(f) for f in _local_files(source)):
        raise UsageError(f"--data {source}: the data is empty: give a file with some text in it")


def _has_text(path: Path, probe: int = 1 << 16) -> bool:
    """Whether a local data file holds any non-blank text (its first 64 KiB, or any byte for a
    binary parquet file)."""
    if path.stat().st_size == 0:
        return False
    if path.suffix.lower() == ".parquet":
        return True
    with open(path, "rb") as f:
        head = f.read(probe)
    return bool(head.strip()) or path.stat().st_size > probe


def _check_form(source: str, split: str, sampling: str | None) -> None:
    """The part of `check_data_request` that needs no network: names, modes, local paths."""
    if split not in ("test", "calibration"):
        raise ValueError(f"split must be 'test' or 'calibration', got {split!r}")
    if sampling is not None and sampling not in SAMPLING:
        raise UsageError(f"unknown --sampling {sampling!r}: use {' or '.join(SAMPLING)}")
    if source == "self":
        if split == "test":
            raise UsageError("--data self only makes calibration data; evaluate on a real text file")
        if sampling == "first":
            raise UsageError("--sampling first needs text to cut windows from; --data self generates "
                             "its text: drop --sampling or use --sampling random")
        return
    if source in NAMED:
        if source == "c4" and split == "calibration" and sampling == "first":
            raise UsageError("--data c4 draws each window from a random document: use --sampling random "
                             "(or a local file with --sampling first)")
        return
    _local_files(source)


# ---------------------------------------------------------------------------- rows and tokens
def load_rows(source: str, split: str = "test") -> list[str]:
    """The text rows of a source. `split` matters only for named datasets ('test' or
    'calibration'); for c4 calibration prefer `document_windows`, which reads lazily."""
    if source in NAMED:
        return list(named_documents(source, split))
    if source == "self":
        raise UsageError("--data self only makes calibration data; evaluate on a real text file")
    return [row for f in _local_files(source) for row in _file_rows(f)]


def join_string(source: str, split: str = "test") -> str:
    """How a source's rows are joined before tokenizing (see the module table)."""
    if source in DATASETS:
        spec = DATASETS[source]
        return spec.eval_join if split == "test" else spec.calibration_join
    return JOIN


def tokenize_rows(tokenizer, rows: Sequence[str], sep: str = JOIN) -> torch.Tensor:
    """Join rows with `sep` and tokenize once: a 1-D LongTensor of token ids (the tokenizer's
    BOS, if it adds one, only at the start, never twice)."""
    text = sep.join(rows)
    if not text.strip():
        raise UsageError("the data is empty: give a file with some text in it")
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    return drop_repeated_bos(ids, getattr(tokenizer, "bos_token_id", None))


def eval_tokens(tokenizer, source: str, seqlen: int | None = None) -> torch.Tensor:
    """The evaluation token stream of a source. For c4 with `seqlen`, truncated to
    `C4_EVAL_WINDOWS` * seqlen tokens (the reference's 256 windows)."""
    ids = tokenize_rows(tokenizer, load_rows(source, "test"), join_string(source, "test"))
    if source == "c4" and seqlen is not None:
        ids = ids[: C4_EVAL_WINDOWS * seqlen]
    return ids


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of `seqlen` tokens, remainder dropped: [n_windows, seqlen]."""
    n = ids.numel() // seqlen
    if n == 0:
        raise UsageError(f"the data has {ids.numel()} tokens, fewer than one window of --seqlen "
                         f"{seqlen}: use a smaller --seqlen or more text")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].view(n, seqlen)


# ---------------------------------------------------------------------------- calibration
def stream_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """`nsamples` windows of one token stream, starts drawn as the reference does:
    `random.Random(seed).randint(0, len - seqlen - 1)` per window, so the stream's last token is
    never in a window and windows may overlap or repeat. Needs len > seqlen."""
    if ids.numel() <= seqlen:
        raise UsageError(f"the calibration data has {ids.numel()} tokens, not more than --seqlen "
                         f"{seqlen}: use a smaller --seqlen or more text")
    rng = random.Random(seed)
    starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([ids[s: s + seqlen] for s in starts])


def document_windows(documents: Sequence[str], tokenize: Callable[[str], torch.Tensor], nsamples: int,
                     seqlen: int, seed: int = 0, max_draws: int | None = None) -> torch.Tensor:
    """`nsamples` windows, each from one document with strictly more than `seqlen` tokens (C4).

    Per window, as the reference does with Python's `random` seeded `seed`: draw a document
    index with `randint(0, len(documents) - 1)`, tokenize only that document (`tokenize` returns
    its 1-D ids), redraw while it has `seqlen` tokens or fewer, then draw the window start with
    `randint(0, ntokens - seqlen - 1)`. Uses its own `random.Random(seed)` (no global state).
    Raises UsageError when no document is long enough (all were seen short, or `max_draws`
    draws, default 100 per window + 10000, found none).
    """
    if len(documents) == 0:
        raise UsageError("the calibration data has no documents")
    rng = random.Random(seed)
    limit = max_draws if max_draws is not None else 100 * nsamples + 10_000
    short: set[int] = set()
    out, draws = [], 0
    while len(out) < nsamples:
        if draws >= limit or len(short) == len(documents):
            raise UsageError(f"no calibration document has more than --seqlen {seqlen} tokens "
                             f"({len(short)} of the documents drawn were too short): use a smaller --seqlen")
        draws += 1
        i = rng.randint(0, len(documents) - 1)
        if i in short:
            continue
        ids = tokenize(documents[i])
        if ids.numel() <= seqlen:
            short.add(i)
            continue
        start = rng.randint(0, ids.numel() - seqlen - 1)
        out.append(ids[start: start + seqlen])
    return torch.stack(out)


def calibration_windows(tokenizer, source: str, nsamples: int, seqlen: int, seed: int = 0,
                        sampling: str = "random", model=None, bos: bool = False,
                        progress: Callable[[int, int], None] | None = None,
                        note: Callable[[str], None] | None = None) -> torch.Tensor:
    """`nsamples` windows of `seqlen` tokens for calibration: [nsamples, seqlen].

    - random: window starts drawn from the tokenized text (`stream_windows`); for c4, one
      window per random long-enough document (`document_windows`);
    - first: the first `nsamples` non-overlapping windows (no randomness; not for c4).
    `source` "self" samples the text from `model` instead (see `self_generated`; it already
    starts from BOS; ``progress(tokens done, total)`` follows the generation). With `bos`, every
    window's first token is the tokenizer's BOS (`with_bos`). ``note(text)`` is told when the
    windows ask for more tokens than the text has (random windows then overlap heavily).
    """
    if nsamples < 1:
        raise UsageError(f"--nsamples must be at least 1, got {nsamples}")
    _check_form(source, "calibration", sampling)  # availability: loading fails fast by itself
    if source == "self":
        if model is None:
            raise UsageError("--data self needs the model to generate from")
        return self_generated(model, tokenizer, nsamples, seqlen, seed, progress=progress)
    if source == "c4":
        bos_id = getattr(tokenizer, "bos_token_id", None)

        def tokenize(text: str) -> torch.Tensor:
            return drop_repeated_bos(tokenizer(text, return_tensors="pt").input_ids[0], bos_id)

        w = document_windows(named_documents("c4", "calibration"), tokenize, nsamples, seqlen, seed)
    else:
        ids = tokenize_rows(tokenizer, load_rows(source, "calibration"), join_string(source, "calibration"))
        if sampling == "first":
            if ids.numel() < nsamples * seqlen:
                raise UsageError(f"--sampling first needs {nsamples} x {seqlen} = {nsamples * seqlen} tokens "
                                 f"but the data has {ids.numel()}: lower --nsamples or --seqlen")
            w = windows(ids, seqlen, nsamples).clone()
        else:
            w = stream_windows(ids, nsamples, seqlen, seed)
            if note is not None and nsamples * seqlen > ids.numel():
                note(f"--nsamples {nsamples} x --seqlen {seqlen} = {nsamples * seqlen} tokens drawn from a text of "
                     f"{ids.numel()}: the windows overlap, each token is in {nsamples * seqlen / ids.numel():.1f} "
                     "of them on average; more text (or fewer windows) calibrates on more distinct data")
    return with_bos(w, tokenizer.bos_token_id) if bos else w


def _forward_kwargs(model) -> tuple[str, bool]:
    """(the KV-cache keyword of ``model.forward``: "cache" in newer transformers, whether it takes
    ``logits_to_keep``)."""
    params = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


@functools.cache
def _faster_in_bfloat16(n: int = 512) -> bool:
    """Whether this CPU multiplies bfloat16 clearly faster than float32 (CPUs with bf16 vector
    instructions do, about 4x; others are slower): a few milliseconds of matmuls decide, once per
    process (so the same seed gives the same text within a process)."""
    a, b = torch.randn(64, n), torch.randn(n, n)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y
        start = time.perf_counter()
        for _ in range(3):
            x @ y
        times[dtype] = time.perf_counter() - start
    return times[torch.bfloat16] * 1.5 < times[torch.float32]


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def sampling_model(model):
    """The model that samples calibration text: on a CPU, a float32 model's bfloat16 copy when
    bf16 is clearly faster there and the copy takes at most a quarter of the free memory (the
    quickstart's Gemma-3-270M samples 1.8x faster); else the model itself. Sampling in bfloat16 is
    sampling from the checkpoint at the precision such models are trained and shipped in."""
    p = next(model.parameters(), None)
    if p is None or p.device.type != "cpu" or p.dtype != torch.float32:
        return model
    copy_bytes = 2 * sum(t.numel() for t in model.parameters())
    free = _available_memory()
    if free is None or copy_bytes > free // 4 or not _faster_in_bfloat16():
        return model
    return copy.deepcopy(model).to(torch.bfloat16)


@torch.no_grad()
def self_generated(model, tokenizer, nsamples: int, seqlen: int, seed: int = 0, batch_size: int = 64,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Calibration text sampled from the model itself, starting from its BOS token: [nsamples, seqlen].

    Data-free calibration: no corpus is needed, and self-generated text is competitive with real
    text for pruning in the literature. Plain sampling at temperature 1 from the full vocabulary,
    end-of-sequence tokens excluded (every window is ``seqlen`` tokens of text), batched, with a KV
    cache and logits of the newest position only (a 262k vocabulary is never materialised for the
    whole sequence). Seeded: the same seed gives the same text on the same machine (the sampling
    model may be a bfloat16 copy: `sampling_model`). ``progress(tokens done, total)``.
    """
    from transformers import DynamicCache

    model = sampling_model(model)
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    eos = getattr(model.generation_config, "eos_token_id", None) if hasattr(model, "generation_config") else None
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None:
        eos.append(tokenizer.eos_token_id)
    device = model_device(model)
    cache_arg, keep_last = _forward_kwargs(model)
    gen = torch.Generator(device=device).manual_seed(seed)
    total, done = nsamples * (seqlen - 1), 0
    out = []
    for start in range(0, nsamples, batch_size):
        b = min(batch_size, nsamples - start)
        seq = torch.full((b, seqlen), bos, dtype=torch.long, device=device)
        cache = DynamicCache(config=model.config)
        for t in range(1, seqlen):
            kwargs = {cache_arg: cache, "use_cache": True, **({"logits_to_keep": 1} if keep_last else {})}
            logits = model(input_ids=seq[:, t - 1: t], **kwargs).logits[:, -1].float()
            if eos:
                logits[:, sorted(set(e for e in eos if 0 <= e < logits.shape[-1]))] = float("-inf")
            seq[:, t] = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen).squeeze(1)
            done += b
            if progress is not None:
                progress(done, total)
        out.append(seq.cpu())
    return torch.cat(out)
