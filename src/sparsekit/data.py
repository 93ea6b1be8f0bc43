"""Text data for calibration and evaluation: named datasets, local files, or the model itself.

A source is one of
- `wikitext2`, `c4`, `ptb`: fetched through `datasets` (needs the hub or a local datasets cache);
- a local `.txt` (one row per line), `.jsonl` / `.json` (a "text" field), `.parquet` ("text" column)
  file, or a folder of such files (read in name order);
- `self`: calibration text sampled from the model itself (no data needed).

Rows are joined with "\\n\\n" and tokenized once, as in the SparseGPT/Wanda protocol.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sparsekit.errors import UsageError

NAMED = ("wikitext2", "c4", "ptb")
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
JOIN = "\n\n"


def _named_rows(name: str, split: str) -> list[str]:
    """Rows of a named dataset; split is 'test' (evaluation) or 'calibration'."""
    try:
        import datasets
    except ImportError:
        raise UsageError(f"--data {name} needs the `datasets` package: pip install datasets, "
                         "or pass a local .txt/.jsonl/.parquet file") from None
    try:
        if name == "wikitext2":
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1",
                                       split="test" if split == "test" else "train")
        elif name == "ptb":
            ds = datasets.load_dataset("ptb_text_only", "penn_treebank",
                                       split="test" if split == "test" else "train")
            return [r["sentence"] for r in ds]
        else:
            shard = ("en/c4-validation.00000-of-00008.json.gz" if split == "test"
                     else "en/c4-train.00000-of-01024.json.gz")
            ds = datasets.load_dataset("allenai/c4", data_files={"x": shard}, split="x")
            if split == "test":
                ds = ds.select(range(min(1100, len(ds))))
    except Exception as exc:  # datasets raises many types when offline
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--data {name}: could not load the dataset ({first[:160]}); without network "
                         "access pass a local file instead, e.g. --data wikitext-2/test.txt") from None
    return list(ds["text"])


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


def load_rows(source: str, split: str = "test") -> list[str]:
    """The text rows of a source. `split` matters only for named datasets."""
    if source in NAMED:
        return _named_rows(source, split)
    if source == "self":
        raise UsageError("--data self only makes calibration data; evaluate on a real text file")
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in LOCAL_SUFFIXES and p.is_file())
        if not files:
            raise UsageError(f"{source}: folder has no {'/'.join(LOCAL_SUFFIXES)} files")
        return [row for f in files for row in _file_rows(f)]
    if path.is_file():
        return _file_rows(path)
    raise UsageError(f"--data {source}: no such file or folder; use a local file or folder, "
                     f"or one of {', '.join(NAMED)}, self")


def tokenize_rows(tokenizer, rows: list[str]) -> torch.Tensor:
    """Join rows with a blank line and tokenize once: a 1-D LongTensor of token ids."""
    text = JOIN.join(rows)
    if not text.strip():
        raise UsageError("the data is empty: give a file with some text in it")
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    return ids


def eval_tokens(tokenizer, source: str) -> torch.Tensor:
    return tokenize_rows(tokenizer, load_rows(source, "test"))


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of `seqlen` tokens, remainder dropped: [n_windows, seqlen]."""
    n = ids.numel() // seqlen
    if n == 0:
        raise UsageError(f"the data has {ids.numel()} tokens, fewer than one window of --seqlen "
                         f"{seqlen}: use a smaller --seqlen or more text")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].view(n, seqlen)


def calibration_windows(tokenizer, source: str, nsamples: int, seqlen: int, seed: int = 0,
                        sampling: str = "random", model=None) -> torch.Tensor:
    """`nsamples` windows of `seqlen` tokens for calibration: [nsamples, seqlen].

    - random: window starts drawn uniformly from the tokenized text with a seeded generator;
    - first: the first `nsamples` non-overlapping windows (no randomness at all).
    `source` "self" samples the text from `model` instead (see `self_generated`).
    """
    if nsamples < 1:
        raise UsageError(f"--nsamples must be at least 1, got {nsamples}")
    if source == "self":
        if model is None:
            raise UsageError("--data self needs the model to generate from")
        return self_generated(model, tokenizer, nsamples, seqlen, seed)
    ids = tokenize_rows(tokenizer, load_rows(source, "calibration"))
    if sampling == "first":
        if ids.numel() < nsamples * seqlen:
            raise UsageError(f"--sampling first needs {nsamples} x {seqlen} = {nsamples * seqlen} tokens "
                             f"but the data has {ids.numel()}: lower --nsamples or --seqlen")
        return windows(ids, seqlen, nsamples).clone()
    if sampling != "random":
        raise UsageError(f"unknown --sampling {sampling!r}: use random or first")
    if ids.numel() <= seqlen:
        raise UsageError(f"the calibration data has {ids.numel()} tokens, not more than --seqlen "
                         f"{seqlen}: use a smaller --seqlen or more text")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (nsamples,), generator=gen)
    return torch.stack([ids[s: s + seqlen] for s in starts.tolist()])


@torch.no_grad()
def self_generated(model, tokenizer, nsamples: int, seqlen: int, seed: int = 0,
                   batch_size: int = 64) -> torch.Tensor:
    """Calibration text sampled from the model itself, starting from its BOS token (temperature 1).

    Data-free calibration: no corpus is needed, and self-generated text is competitive with
    real text for pruning in the literature.
    """
    from sparsekit.models import model_device

    bos = tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    device = model_device(model)
    torch.manual_seed(seed)
    out = []
    for start in range(0, nsamples, batch_size):
        b = min(batch_size, nsamples - start)
        prompt = torch.full((b, 1), bos, dtype=torch.long, device=device)
        seq = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=seqlen - 1,
                             min_new_tokens=seqlen - 1, pad_token_id=tokenizer.pad_token_id or bos)
        out.append(seq[:, :seqlen].cpu())
    return torch.cat(out)
