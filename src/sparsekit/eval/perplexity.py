"""Token perplexity with the SparseGPT/Wanda protocol.

Text is tokenized once; the tokens are cut into non-overlapping windows of `seqlen` (remainder
dropped); each window is scored on its own (no state carried over), so its first token is never
predicted; perplexity is exp of the mean negative log-likelihood over all predicted tokens. All
windows have seqlen - 1 predicted tokens, so this equals exp of the mean of per-window means.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from sparsekit.anatomy import model_device


@dataclass
class PerplexityResult:
    ppl: float
    nll: float          # mean token negative log-likelihood (nats)
    tokens: int         # predicted tokens scored
    windows: int
    seqlen: int
    seconds: float


@torch.no_grad()
def window_nll(model, batch: torch.Tensor) -> torch.Tensor:
    """Sum of token NLL for each window of a [B, T] batch (first token unscored): [B], float64."""
    logits = model(input_ids=batch.to(model_device(model)), use_cache=False).logits
    logits = logits[:, :-1].float()
    target = batch[:, 1:].to(logits.device)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    return nll.view(batch.shape[0], -1).double().sum(dim=1).cpu()


def perplexity(model, windows: torch.Tensor, batch_size: int = 1,
               on_batch: Callable[[int], None] | None = None) -> PerplexityResult:
    """Perplexity of `model` on [n_windows, seqlen] token windows."""
    start = time.perf_counter()
    n, seqlen = windows.shape
    total = 0.0
    for i in range(0, n, batch_size):
        batch = windows[i: i + batch_size]
        total += float(window_nll(model, batch).sum())
        if on_batch is not None:
            on_batch(batch.shape[0])
    tokens = n * (seqlen - 1)
    nll = total / tokens
    return PerplexityResult(math.exp(nll), nll, tokens, n, seqlen, time.perf_counter() - start)
