"""``sparsekit bench``: decode/prefill speed and memory of a model dense vs sparse (2:4 weights,
activation sparsity, or both), and a check that the sparse path computes the model it should.

All runs use the same runtime (:mod:`sparsekit.runtime.decode`): static KV cache, eager
prefill, and on CUDA the decode step compiled with ``torch.compile`` and captured in a CUDA
graph, so the speedup is against the best dense runtime sparsekit makes. The dense run is the
model with zeros in the pruned positions (a model loaded with 2:4 layers is first turned back
into that dense twin); the sparse run swaps every exact-2:4 ``nn.Linear`` for
:class:`~sparsekit.runtime.sparse24_linear.Sparse24Linear`.

Self-check. The two runs compute the same function, so their logits must agree up to the
rounding of the model dtype. The dense run decodes greedily; the sparse run is then
*teacher-forced* with the dense tokens (step j consumes the dense run's token j), so every
decode step of both runs sees the same inputs, and the logits of the prefill and of every
decode step are compared: ``max_logit_rel_diff`` = max over sequences and steps of
``||l_sparse - l_dense|| / ||l_dense||``. Above :data:`TOLERANCE` for the dtype the bench
raises :class:`BenchCheckError` (the CLI turns it into exit code 1). Greedy token agreement
(the sparse argmax at each teacher-forced step against the dense token) is reported, not
required: a random-weight model has many near-tied logits, so a last-bit difference can flip
an argmax. (The earlier bench compared free-running greedy tokens, which diverge for good after
the first such flip, and only the *prefill* logits, which its dense-fallback prefill computed
bit for bit like dense: hence "tokens_match: false" next to "max_logit_rel_diff: 0.0".)

Activation sparsity (`~sparsekit.runtime.act_sparse.ActSparse` wrappers: thresholds loaded with
the model, or ``activation=`` synthetic ones, see `install_synthetic_activation`). The dense run
has the wrappers disabled; the sparse run has them enabled (on 2:4 layers where the weights are
exactly 2:4), so the speedup is against the plain dense model. A thresholded model computes
another function than the dense one, so the self-check then compares the sparse run with a
third, *reference* run of the same function: dense weights, the same thresholds, every
activation-sparse linear forced onto the masked dense product (`act_dispatch.force("torch")`),
teacher-forced with the dense tokens like the sparse run (token agreement is then against its
argmax too). Its speed is reported too.
"""

from __future__ import annotations

import gc
import time

import torch
from torch import nn

from sparsekit.anatomy import prunable_linears
from sparsekit.dtypes import DTYPES, dtype_name
from sparsekit.errors import UsageError
from sparsekit.loading import LoadedModel, resolve_device
from sparsekit.pruning.masks import apply_mask_, nm_mask
from sparsekit.runtime import act_dispatch
from sparsekit.runtime.act_sparse import (
    ActSparse,
    activation_modules,
    install_activation_sparsity,
    set_activation_mode,
)
from sparsekit.runtime.decode import DecodeRuntime
from sparsekit.runtime.sparse24_linear import (
    Sparse24Linear,
    densify_model_24,
    is_24,
    sparsify_model_24,
)
from sparsekit.workflows.common import Progress, check_model, load, notify, quiet_transformers

# Max relative L2 difference of logits (per sequence and step) between the dense and the 2:4
# run. The two differ only in the order of fp32 accumulation inside the linears, i.e. in an
# occasional last-bit difference of a linear's bf16 output, which the layers carry on. On a
# random bf16 Llama (16 layers, width 1024, 2:4 by magnitude; CPU) summing each linear in
# another order gave 0.015; reversing the output rows of a single linear (a wrong tile, as a
# kernel bug would) gave 0.33-0.37. fp16 keeps 3 more bits (about 8x less rounding noise).
# With activation sparsity the same tolerances apply to sparse vs reference; there a last-bit
# difference of a linear's input can also flip the mask of an entry lying at its threshold.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
CPU_NOTE = ("CPU run: 2:4 pays off on GPUs, where decode is bound by weight bandwidth and "
            "sparsekit's kernels read 9/16 of the dense bytes; on the CPU the 2:4 layers run "
            "the plain-torch reference (decompress, then multiply), so they are slower here.")
CPU_ACT_NOTE = ("CPU run: activation sparsity is meant for GPU decode, where sparsekit's kernel "
                "skips the weights of zeroed inputs; on the CPU it runs the masked dense product "
                "(mask, then the dense multiply), so it is slower here.")
CPU_BOTH_NOTE = (CPU_NOTE + " Activation sparsity likewise runs the masked dense product "
                 "(mask, then the dense multiply) on the CPU.")
SYNTHETIC_SAMPLE = 1 << 18   # |x| entries per site the synthetic thresholds are quantiles of


class BenchCheckError(RuntimeError):
    """The sparse run does not compute the model it should (the dense model, or with activation
    sparsity the reference run): ``.result`` has the full bench result."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result

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


def check_activation_target(target) -> None:
    """A synthetic activation target is a fraction in (0, 1)."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1:
        raise UsageError(f"--activation {target} is outside (0, 1): give the fraction of each "
                         "linear's inputs to zero, e.g. 0.5")


@torch.no_grad()
def install_synthetic_activation(model: nn.Module, ids: torch.Tensor, target: float, *,
                                 mode: str = "decode", sample: int = SYNTHETIC_SAMPLE,
                                 seed: int = 0) -> dict[str, ActSparse]:
    """TEAL-style scalar thresholds on the input of every decoder linear, zeroing about
    ``target`` of its inputs: one forward of ``ids`` with hooks, the ``target`` quantile of |x|
    over a random subsample (``sample`` entries) of each linear's input. A synthetic *speed*
    setting, not a quality one (the thresholds come from this prompt, not from calibration
    data, and ignore how earlier sites shift later ones). ``mode`` "decode": prefill stays
    dense, as the activation-sparse kernel serves decode. Returns the wrappers by name."""
    check_activation_target(target)
    linears = prunable_linears(model)
    if not linears:
        raise UsageError("the model has no decoder linear layer to put activation sparsity on")
    g = torch.Generator().manual_seed(seed)
    thresholds: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module, args):
            a = args[0].detach().reshape(-1)
            if a.numel() > sample:
                a = a[torch.randint(a.numel(), (sample,), generator=g).to(a.device)]
            thresholds[name] = torch.quantile(a.abs().float(), float(target)).cpu()
        return record

    handles = [lin.register_forward_pre_hook(hook(name)) for name, lin in linears.items()]
    try:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in linears if n not in thresholds]
    if missing:
        raise RuntimeError(f"the calibration forward never reached {missing[0]}")
    spec = {"method": "teal", "mode": mode, "sites": {n: {"where": "input"} for n in linears}}
    tensors = {f"{n}.threshold": thresholds[n] for n in linears}
    return install_activation_sparsity(model, spec, tensors, mode=mode, count=False)


def _exact_24(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` layers `sparsify_model_24` would swap."""
    return [name for name, m in model.named_modules()
            if type(m) is nn.Linear and m.in_features % 4 == 0 and is_24(m.weight.detach())]


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def _weight_bytes(model: nn.Module) -> int:
    total = sum(t.numel() * t.element_size()
                for t in list(model.parameters()) + list(model.buffers()))
    return total + sum(m.cusparselt_bytes() for m in model.modules()
                       if isinstance(m, Sparse24Linear))


def _free(device: torch.device) -> None:
    torch._dynamo.reset()  # compiled graphs hold on to the previous model's tensors
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@torch.no_grad()
def _run(model: nn.Module, ids: torch.Tensor, new_tokens: int, teacher: torch.Tensor | None,
         record_rows: int, compile: bool | None, cuda_graph: bool | None) -> dict:
    """Prefill (warm-up, then timed) and ``new_tokens - 1`` decode steps (capture, then timed)
    in a fresh :class:`DecodeRuntime`. Returns speeds, memory, tokens [B, new_tokens] (the
    prefill's argmax first) and fp32 logits of the first ``record_rows`` sequences."""
    device = ids.device
    batch, plen = ids.shape
    steps = new_tokens - 1
    _peak_reset(device)
    rt = DecodeRuntime(model, batch, plen + new_tokens + 1, compile=compile,
                       cuda_graph=cuda_graph, record_rows=record_rows, record_steps=steps)
    rt.prefill(ids)
    rt.sync()
    t0 = time.perf_counter()
    prefill_logits = rt.prefill(ids)
    rt.sync()
    prefill_s = time.perf_counter() - t0
    first = prefill_logits.argmax(-1, keepdim=True)
    rt.decode(0)  # compile and capture (restores the state it found)
    rt.sync()
    t0 = time.perf_counter()
    tokens = rt.decode(steps, teacher=teacher)
    rt.sync()
    decode_s = time.perf_counter() - t0
    logits = rt.recorded_logits(steps)
    info = dict(
        prefill_tokens_per_s=batch * plen / prefill_s,
        decode_tokens_per_s=batch * steps / decode_s if steps else None,
        decode_ms_per_step=1000 * decode_s / steps if steps else None,
        peak_memory_bytes=_peak(device),
        cuda_graph=rt._graph is not None,
        compiled=rt.compiled,
        compile_seconds=rt.compile_seconds,
    )
    for key in ("compile_error", "graph_error"):
        if getattr(rt, key):
            info[key] = getattr(rt, key)[:300]
    out = dict(info=info, tokens=torch.cat([first, tokens], dim=1).cpu(),
               prefill_logits=prefill_logits.float().cpu(),
               logits=None if logits is None else logits.cpu())
    del rt
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a - b|| / ||b|| along the last dim."""
    return (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-30)


def compare(dense: dict, sparse: dict, dtype: torch.dtype) -> dict:
    """The self-check numbers from two :func:`_run` results (sparse teacher-forced)."""
    pre = _rel(sparse["prefill_logits"], dense["prefill_logits"])
    rels = [pre]
    if dense["logits"] is not None and dense["logits"].numel():
        rels.append(_rel(sparse["logits"], dense["logits"]).flatten())
    rel = torch.cat([r.flatten() for r in rels])
    # sparse token j+1 is its argmax after consuming dense token j
    agree = sparse["tokens"] == dense["tokens"]
    tol = TOLERANCE.get(dtype, TOLERANCE[torch.float32])
    return dict(max_logit_rel_diff=rel.max().item(), mean_logit_rel_diff=rel.mean().item(),
                prefill_logit_rel_diff=pre.max().item(), logit_rows_compared=rel.numel(),
                token_agreement=agree.float().mean().item(), tokens_match=bool(agree.all()),
                tolerance=tol, check_passed=bool(rel.max().item() <= tol))


def run_bench(model: nn.Module, tokenizer=None, batch: int = 1, prompt_len: int = 512,
              new_tokens: int = 128, device: str | torch.device = "cuda",
              compile: bool | None = None, cuda_graph: bool | None = None, seed: int = 0,
              cusparselt: bool = False, check: bool = True, record_rows: int = 2,
              corrupt=None, activation: float | None = None, activation_recipe: dict | None = None,
              progress: Progress | None = None) -> dict:
    """Dense, then sparse (2:4 module swap, in place; activation wrappers enabled) on the same
    random prompt; see the module docstring. Returns ``{"dense": {...}, "sparse": {...},
    "speedup_decode", "speedup_prefill", "memory_ratio", "swapped_layers",
    "max_logit_rel_diff", "mean_logit_rel_diff", "prefill_logit_rel_diff",
    "logit_rows_compared", "token_agreement", "tokens_match" (every teacher-forced argmax
    agrees), "tolerance", "check_passed", "activation", "config": {...}}`` plus ``"note"`` on
    CPU. Each run dict has prefill and decode tokens/s, decode ms/step, peak and weight bytes,
    whether the step was compiled and captured in a CUDA graph, and the compile (plus warm-up)
    seconds. ``"activation"`` is None without activation sparsity, else ``{"sites", "target",
    "method", "mode", "synthetic", "reference"}`` (the reference run's dict; "target" and
    "method" from ``activation_recipe``, the saved recipe, or None when unknown).

    ``activation``: install synthetic thresholds at that fraction first
    (`install_synthetic_activation`; the model must have none). Raises
    :class:`BenchCheckError` when ``check`` and the logits disagree beyond the tolerance,
    :class:`~sparsekit.errors.UsageError` when the model has neither an exact-2:4 linear nor
    activation sparsity. ``cusparselt`` also builds cuSPARSELt copies (prefill; more memory).
    ``corrupt`` (tests): called with the model after the 2:4 swap, before the sparse run, to
    break it on purpose.
    ``progress(stage, done, total)``: called as each run starts."""
    device = torch.device(device)
    model = model.to(device).eval()
    densify_model_24(model)  # a loaded 2:4 model runs dense as its twin first
    wrappers = activation_modules(model)
    if activation is not None:
        check_activation_target(activation)
        if wrappers:
            raise UsageError("the model already has activation thresholds: bench them without "
                             "--activation, or load the model without them")
    eligible = _exact_24(model)
    if not eligible and not wrappers and activation is None:
        raise UsageError("the model has no linear layer whose weight is exactly 2:4: prune it "
                         "with --pattern 2:4 (or use --random), or give --activation")
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=g)
    if tokenizer is not None and getattr(tokenizer, "bos_token_id", None) is not None:
        ids[:, 0] = tokenizer.bos_token_id
    ids = ids.to(device)
    if activation is not None:
        notify(progress, f"calibrating synthetic activation thresholds ({activation:g} of linear inputs)")
        wrappers = install_synthetic_activation(model, ids, activation, seed=seed)
        eligible = _exact_24(model)  # the same linears, now named inside their wrappers
    act = bool(wrappers)
    counting = {name: w.count for name, w in wrappers.items()}
    for w in wrappers.values():
        w.count = False  # the counters need the mask: they would keep every call off the op
    runs, done = 3 if act else 2, 0
    set_activation_mode(model, enabled=False)
    _free(device)
    notify(progress, "benchmarking dense", done, runs)
    dense = _run(model, ids, new_tokens, None, record_rows, compile, cuda_graph)
    dense["info"]["weight_bytes"] = _weight_bytes(model)
    done += 1
    _free(device)
    set_activation_mode(model, enabled=True)
    teacher = dense["tokens"].to(device)
    reference = None
    if act:
        notify(progress, "benchmarking the reference (same thresholds, masked dense product)", done, runs)
        with act_dispatch.force("torch"):
            reference = _run(model, ids, new_tokens, teacher, record_rows, compile, cuda_graph)
        reference["info"]["weight_bytes"] = _weight_bytes(model)
        done += 1
        _free(device)
    swapped = sparsify_model_24(model, names=eligible, cusparselt=cusparselt) if eligible else []
    if corrupt is not None:
        corrupt(model)
    _free(device)
    notify(progress, "benchmarking sparse", done, runs)
    sparse = _run(model, ids, new_tokens, teacher, record_rows, compile, cuda_graph)
    sparse["info"]["weight_bytes"] = _weight_bytes(model)
    notify(progress, "benchmarking sparse", runs, runs)
    _free(device)
    for name, w in wrappers.items():
        w.count = counting[name]
    d, s = dense["info"], sparse["info"]
    recipe = activation_recipe or {}
    result = {
        "dense": d,
        "sparse": s,
        "swapped_layers": len(swapped),
        **compare(reference if act else dense, sparse, dtype),
        "speedup_decode": (s["decode_tokens_per_s"] / d["decode_tokens_per_s"]
                           if d["decode_tokens_per_s"] else None),
        "speedup_prefill": s["prefill_tokens_per_s"] / d["prefill_tokens_per_s"],
        "memory_ratio": (s["peak_memory_bytes"] / d["peak_memory_bytes"]
                         if d["peak_memory_bytes"] else None),
        "activation": None if not act else {
            "sites": len(wrappers),
            "target": activation if activation is not None else recipe.get("target"),
            "method": "teal" if activation is not None else recipe.get("method"),
            "mode": "/".join(sorted({w.mode for w in wrappers.values()})),
            "synthetic": activation is not None,
            "reference": reference["info"],
        },
        "config": dict(batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                       device=str(device), dtype=dtype_name(dtype),
                       cusparselt=cusparselt),
    }
    if device.type != "cuda":
        result["note"] = CPU_BOTH_NOTE if act and swapped else CPU_ACT_NOTE if act else CPU_NOTE
    if check and not result["check_passed"]:
        what = ("the reference run's (dense weights, the same activation thresholds, masked "
                "dense product)" if act else "the dense run's")
        raise BenchCheckError(
            f"{'sparse' if act else '2:4'} self-check failed: the sparse run's logits differ from "
            f"{what} by {result['max_logit_rel_diff']:.3g} (relative L2, worst sequence and step; "
            f"tolerance {result['tolerance']:g} for {result['config']['dtype']}): the "
            f"{'sparse' if act else '2:4'} kernels computed a different model", result)
    return result


def bench(model: str | LoadedModel | None = None, *, random: str | None = None, batch: int = 1,
          prompt: int = 512, new: int = 128, dtype: str = "bfloat16", device: str = "auto",
          cusparselt: bool = False, eager: bool = False, check: bool = True,
          activation: float | None = None, progress: Progress | None = None) -> dict:
    """`sparsekit bench` as a library call: the `run_bench` result for ``model`` (a model
    directory, export or hub id, loaded with its saved activation thresholds unless
    ``activation`` is given) or for a ``random`` model (a `RANDOM_MODELS` name or a
    config.json path, pruned 2:4 by magnitude). ``activation``: synthetic thresholds zeroing
    that fraction of every decoder linear's inputs (a speed setting, not a quality one).
    ``eager``: no torch.compile, no CUDA graph. Options are checked (one-line
    :class:`~sparsekit.errors.UsageError`) before anything slow; never prints; raises
    :class:`BenchCheckError` when ``check`` fails."""
    if (model is None) == (random is None):
        raise UsageError("give a MODEL or --random NAME (not both)")
    if min(batch, prompt, new) < 1:
        raise UsageError("--batch, --prompt and --new must be at least 1")
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if activation is not None:
        check_activation_target(activation)
    dev = resolve_device(device)
    if cusparselt and dev != "cuda":
        raise UsageError("--cusparselt needs a GPU (--device cuda or auto)")
    if model is not None:
        check_model(model)
    recipe = None
    if random is not None:
        quiet_transformers()
        notify(progress, f"building random {random}")
        try:
            m = random_model(random, dtype=DTYPES[dtype], device=dev)
        except (OSError, ValueError):
            raise UsageError(f"--random {random}: not a known size or a readable config.json: use one of "
                             f"{', '.join(RANDOM_MODELS)}, or a path to a config.json") from None
        tok = None
    else:
        loaded, _ = load(model, progress=progress, dtype=dtype, device=dev,
                         activation="off" if activation is not None else "auto")
        m, tok = loaded.model, loaded.tokenizer
        if activation is None:
            recipe = (loaded.meta or {}).get("activation")
    return run_bench(m, tok, batch=batch, prompt_len=prompt, new_tokens=new, device=dev,
                     cusparselt=cusparselt, check=check, activation=activation,
                     activation_recipe=recipe, progress=progress,
                     **({"compile": False, "cuda_graph": False} if eager else {}))
