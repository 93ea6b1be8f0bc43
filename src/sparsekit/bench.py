"""``sparsekit bench``: decode/prefill speed and memory of a model dense vs 2:4-packed.

Both runs use the same runtime: a static KV cache (transformers ``StaticCache``), greedy
decoding, and on CUDA the decode step captured once in a CUDA graph and replayed (so launch
overhead is equal for both and the weight streaming shows). The sparse run swaps every exact
2:4 ``nn.Linear`` for :class:`~sparsekit.kernels.linear.Sparse24Linear` in place
(``sparsify_model_24``). Greedy tokens and last logits are compared between the two runs.
"""

from __future__ import annotations

import gc
import time

import torch
from torch import nn

from sparsekit.kernels.linear import sparsify_model_24

RANDOM_MODELS = {
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=8192, rope_theta=500000.0),
    "llama-3-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=8192),
    "llama-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                       max_position_embeddings=512),
}


def prune_24_(model: nn.Module) -> list[str]:
    """Magnitude 2:4 on every prunable linear of the decoder layers (not lm_head), in place."""
    from sparsekit.models import prunable_linears
    from sparsekit.prune.masks import apply_mask_, nm_mask

    pruned = []
    for name, lin in prunable_linears(model).items():
        if lin.in_features % 4 == 0:
            apply_mask_(lin.weight, nm_mask(lin.weight.detach().abs(), 2, 4))
            pruned.append(name)
    return pruned


def random_config(name_or_config_path: str):
    """Config of a named size (``RANDOM_MODELS``) or from a config.json path."""
    from transformers import AutoConfig, LlamaConfig

    if name_or_config_path not in RANDOM_MODELS:
        return AutoConfig.from_pretrained(name_or_config_path, local_files_only=True)
    kw = dict(RANDOM_MODELS[name_or_config_path])
    rope = kw.pop("rope_theta", None)
    config = LlamaConfig(**kw)
    if rope is not None:
        config.rope_parameters = {"rope_type": "default", "rope_theta": rope}
    return config


def random_model(name_or_config_path: str, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu", seed: int = 0, prune: bool = True) -> nn.Module:
    """Random-weight causal LM from a named size (``RANDOM_MODELS``) or a config.json path,
    its decoder Linear weights pruned 2:4 by magnitude unless ``prune=False``. No network access."""
    from transformers import AutoModelForCausalLM

    config = random_config(name_or_config_path)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    if prune:
        prune_24_(model)
    return model


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _run(model, input_ids: torch.Tensor, new_tokens: int, use_graph: bool) -> dict:
    from transformers import StaticCache

    device = input_ids.device
    batch, plen = input_ids.shape
    cache = StaticCache(config=model.config, max_cache_len=plen + new_tokens + 1)
    _peak_reset(device)
    # prefill (timed after one warm-up on a throwaway cache)
    pos = torch.arange(plen, device=device)
    warm = StaticCache(config=model.config, max_cache_len=plen + new_tokens + 1)
    model(input_ids=input_ids, past_key_values=warm, cache_position=pos, use_cache=True)
    del warm
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, past_key_values=cache, cache_position=pos, use_cache=True)
    _sync(device)
    prefill_s = time.perf_counter() - t0
    next_tok = out.logits[:, -1].argmax(-1, keepdim=True)
    tokens = [next_tok]
    static_ids = next_tok.clone()
    static_pos = torch.tensor([plen], device=device)

    def step():
        return model(input_ids=static_ids, past_key_values=cache, cache_position=static_pos,
                     use_cache=True).logits[:, -1]

    graph = None
    if use_graph:
        try:  # warm up on a side stream, then capture one decode step
            s = torch.cuda.Stream(device)
            s.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(s):
                for _ in range(2):
                    step()
            torch.cuda.current_stream(device).wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_logits = step()
        except Exception as e:  # report and fall back to eager, same for both runs
            print(f"[bench] CUDA graph capture failed ({type(e).__name__}: {e}); eager")
            graph = None
        # the warm-up/capture wrote junk at position plen; it is overwritten by step 1
    last_logits = None
    _sync(device)
    t0 = time.perf_counter()
    for i in range(new_tokens - 1):
        static_ids.copy_(tokens[-1])
        static_pos.fill_(plen + i)
        if graph is not None:
            graph.replay()
            logits = static_logits
        else:
            logits = step()
        last_logits = logits.float().clone()
        tokens.append(logits.argmax(-1, keepdim=True))
    _sync(device)
    decode_s = time.perf_counter() - t0
    steps = max(new_tokens - 1, 1)
    return dict(
        prefill_tokens_per_s=batch * plen / prefill_s,
        decode_tokens_per_s=batch * steps / decode_s if new_tokens > 1 else None,
        decode_ms_per_step=1000 * decode_s / steps,
        peak_memory_bytes=_peak(device),
        tokens=torch.cat(tokens, dim=1).cpu(),
        last_logits=None if last_logits is None else last_logits.cpu(),
        prefill_logits=out.logits[:, -1].float().cpu(),
        cuda_graph=graph is not None,
    )


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size()
               for t in list(model.parameters()) + list(model.buffers()))


def run_bench(model: nn.Module, tokenizer=None, batch: int = 1, prompt_len: int = 512,
              new_tokens: int = 128, device: str | torch.device = "cuda",
              use_graph: bool | None = None, seed: int = 0) -> dict:
    """Dense then 2:4-sparse (module swap) on the same random prompt; returns
    ``{"dense": {...}, "sparse": {...}, "speedup_decode", "speedup_prefill",
    "swapped_layers", "tokens_match", "token_match_fraction", "max_logit_rel_diff",
    "config": {...}}``. Each run dict has prefill/decode tokens/s, decode ms/step, peak and
    weight memory in bytes, and whether a CUDA graph was used. The model is modified in
    place (swapped to Sparse24Linear). ``tokenizer`` is only used for a BOS/vocab size."""
    device = torch.device(device)
    model = model.to(device).eval()
    if use_graph is None:
        use_graph = device.type == "cuda"
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=g)
    if tokenizer is not None and getattr(tokenizer, "bos_token_id", None) is not None:
        ids[:, 0] = tokenizer.bos_token_id
    ids = ids.to(device)
    dense = _run(model, ids, new_tokens, use_graph)
    dense["weight_bytes"] = _weight_bytes(model)
    swapped = sparsify_model_24(model)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    sparse = _run(model, ids, new_tokens, use_graph)
    sparse["weight_bytes"] = _weight_bytes(model)
    same = dense["tokens"] == sparse["tokens"]
    ref, got = dense["prefill_logits"], sparse["prefill_logits"]
    rel = ((got - ref).norm() / ref.norm().clamp_min(1e-12)).item()
    result = {
        "dense": {k: v for k, v in dense.items() if not isinstance(v, torch.Tensor)},
        "sparse": {k: v for k, v in sparse.items() if not isinstance(v, torch.Tensor)},
        "swapped_layers": len(swapped),
        "tokens_match": bool(same.all()),
        "token_match_fraction": same.float().mean().item(),
        "max_logit_rel_diff": rel,
        "speedup_decode": (sparse["decode_tokens_per_s"] / dense["decode_tokens_per_s"]
                           if dense["decode_tokens_per_s"] else None),
        "speedup_prefill": sparse["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"],
        "config": dict(batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                       device=str(device), dtype=str(model.dtype)),
    }
    return result
