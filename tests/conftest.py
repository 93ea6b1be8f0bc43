"""Shared fixtures: tiny random models of several architectures (built from configs, no
download), a tiny tokenizer trained on the shipped text fixture, and a CLI runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels: compiled on a GPU, run by the Triton interpreter on CPU tensors otherwise.
# Set before anything imports triton (its jit decorator reads the variable).
# Saving models in fixtures must not print progress bars into the stderr a CLI test captures.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

REPO = Path(__file__).resolve().parents[1]
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
