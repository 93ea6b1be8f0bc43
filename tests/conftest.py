"""Shared fixtures: tiny random models of several architectures (built from configs, no
download), a tiny tokenizer trained on the shipped text fixture, and a CLI runner; and the few
helpers that tests in more than one folder use (library tests in the folder of the package area
they test, command-line tests in cli/).

Test modules in the subfolders import from here with ``from conftest import ...``: pytest's default
import mode puts this folder on ``sys.path`` when it loads this file (it has no ``__init__.py``)
and each test module's own folder when it loads that module, so only this file is shared across
folders; test module names are unique across folders for the same reason."""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels: compiled on a GPU, run by the Triton interpreter on CPU tensors otherwise.
# Set before anything imports triton (its jit decorator reads the variable).
# Saving models in fixtures must not print progress bars into the stderr a CLI test captures.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# CLI tests read stderr for one-line errors: no progress lines unless a test asks for them
# (SPARSEKIT_PROGRESS=lines), as a user's piped run gets by default.
os.environ.setdefault("SPARSEKIT_PROGRESS", "off")

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# Text for tests: the fixture shipped in tests/data (valid.txt, test.txt; see generate.py there),
# so results never depend on the machine. SPARSEKIT_TEST_DATA points at another folder holding
# the same two file names (e.g. the WikiText-2 files), for manual runs only.
DATA = Path(os.environ.get("SPARSEKIT_TEST_DATA") or Path(__file__).resolve().parent / "data")
VOCAB = 512

# Small configs for every architecture the project supports and tests.
ARCH_CONFIGS = {
    "llama": ("LlamaConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2)),
    "mistral": ("MistralConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, sliding_window=32)),
    "qwen2": ("Qwen2Config", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16)),
    "gemma3": ("Gemma3TextConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                        sliding_window=8, layer_types=["sliding_attention",
                                                                       "full_attention",
                                                                       "sliding_attention"])),
    "opt": ("OPTConfig", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                              word_embed_proj_dim=64)),
    "phi3": ("Phi3Config", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2,
                                original_max_position_embeddings=256)),
}
ARCHS = tuple(ARCH_CONFIGS)


def data_file(split: str = "test") -> Path:
    """The test text of a split ('valid' or 'test'): one row per line."""
    path = DATA / f"{split}.txt"
    if not path.exists():
        raise FileNotFoundError(f"test text {path} is missing (regenerate with tests/data/generate.py)")
    return path


def tiny_config(arch: str):
    import transformers

    cls_name, kwargs = ARCH_CONFIGS[arch]
    cls = getattr(transformers, cls_name)
    return cls(vocab_size=VOCAB, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
               pad_token_id=0, tie_word_embeddings=False, **kwargs)


def tiny_model(arch: str, seed: int = 0, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=dtype)
    # Random init is near-uniform; give the weights some spread so tests see real differences.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rows = data_file("valid").read_text(encoding="utf-8").splitlines()[:2000]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(rows, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """Factory: a saved tiny random model directory (config, safetensors, tokenizer) per arch."""
    made: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in made:
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            tiny_model(arch).save_pretrained(path)
            tiny_tokenizer.save_pretrained(path)
            made[arch] = path
        return made[arch]

    return make


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the sparsekit CLI in-process: returns (exit code, stdout, stderr)."""
    from sparsekit.cli import main

    def run(*args: str):
        monkeypatch.setattr(sys, "argv", ["sparsekit", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


# ---------------------------------------------------------------- helpers shared across folders
def independent_ppl(model, ids: torch.Tensor, seqlen: int, max_windows: int | None = None,
                    bos: int | None = None) -> float:
    """The SparseGPT/Wanda protocol written out plainly: exp(mean over windows of mean CE).
    With `bos`, each window's first (never scored) token is replaced by it."""
    n = ids.numel() // seqlen
    if max_windows:
        n = min(n, max_windows)
    per_window = []
    with torch.no_grad():
        for w in range(n):
            chunk = ids[w * seqlen:(w + 1) * seqlen].clone().unsqueeze(0)
            if bos is not None:
                chunk[0, 0] = bos
            logp = torch.log_softmax(model(chunk).logits[0, :-1].double(), dim=-1)
            per_window.append(-logp.gather(1, chunk[0, 1:, None]).mean().item())
    return math.exp(sum(per_window) / n)


def layer_outputs(model, run):
    """Outputs of every decoder layer while `run()` executes, per call."""
    from sparsekit.anatomy import decoder_layers

    _, layers = decoder_layers(model)
    seen = {i: [] for i in range(len(layers))}
    hooks = [layer.register_forward_hook(
        lambda m, a, out, i=i: seen[i].append((out[0] if isinstance(out, tuple) else out).detach().clone()))
        for i, layer in enumerate(layers)]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def make_pruned(path: Path, tokenizer, arch: str = "llama", dtype=torch.float32,
                pattern: str = "2:4", edit=None, shard: str | None = None, extra=None,
                tied: bool = False):
    """A pruned directory as `sparsekit prune` writes it; returns (path, model, targets)."""
    from sparsekit.anatomy import prunable_linears
    from sparsekit.kernels.sparse24 import mask_24_magnitude

    model = tiny_model(arch, dtype=dtype) if not tied else tied_model(arch, dtype)
    targets = prunable_linears(model)
    with torch.no_grad():
        for lin in targets.values():
            w = lin.weight
            if pattern == "2:4":
                w.mul_(mask_24_magnitude(w))
            else:  # unstructured 50% by magnitude
                w.mul_(w.abs() >= w.abs().float().median().to(w.dtype))
        if edit is not None:
            edit(model, targets)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    meta = {"sparsekit_version": "0.1.0",
            "recipe": {"method": "magnitude", "pattern": pattern, "sparsity": 0.5,
                       "targets": None, "ignore": None},
            "layers": {n: {"target": 0.5, "achieved": 0.5} for n in targets},
            "achieved_sparsity": 0.5, **(extra or {})}
    (path / "sparsekit.json").write_text(json.dumps(meta))
    return path, model, sorted(targets)


def tied_model(arch: str, dtype):
    """Like tiny_model but with lm_head tied to the embedding (as in Gemma-3-270M)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 0.08)
    return model.eval()


def st_header(file: Path) -> dict:
    """The JSON header of a safetensors file, read by hand (independent of the code tested)."""
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def all_headers(directory: Path) -> dict:
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        out.update({k: v for k, v in st_header(file).items() if k != "__metadata__"})
    return out


def scramble_one_layer(model):
    """Reverse the output rows of one 2:4 layer: a wrong tile order, as a kernel bug would."""
    from sparsekit.runtime.sparse24_linear import Sparse24Linear

    layer = model.model.layers[1].mlp.down_proj
    assert isinstance(layer, Sparse24Linear)
    with torch.no_grad():
        layer.values.copy_(layer.values.flip(1))
        layer.meta.copy_(layer.meta.flip(1))
