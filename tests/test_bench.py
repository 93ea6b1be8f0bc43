"""sparsekit bench on a tiny random 2:4 Llama on CPU: dense vs Sparse24Linear agree."""

import pytest
import torch

from sparsekit.bench import random_model, run_bench
from sparsekit.kernels.linear import Sparse24Linear
from sparsekit.kernels.sparse24 import check_24


def test_random_model_is_24():
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu")
    mlp = model.model.layers[0].mlp
    check_24(mlp.down_proj.weight.detach())
    assert (mlp.down_proj.weight == 0).float().mean().item() >= 0.5


def test_run_bench_cpu_tiny():
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu")
    res = run_bench(model, None, batch=2, prompt_len=8, new_tokens=5, device="cpu")
    for key in ("dense", "sparse", "speedup_decode", "speedup_prefill", "tokens_match",
                "max_logit_rel_diff", "swapped_layers", "config"):
        assert key in res
    for run in (res["dense"], res["sparse"]):
        assert run["decode_tokens_per_s"] > 0 and run["prefill_tokens_per_s"] > 0
        assert run["cuda_graph"] is False
    assert res["swapped_layers"] == 2 * 7  # q,k,v,o,gate,up,down per layer
    assert any(isinstance(m, Sparse24Linear) for m in model.modules())
    assert res["sparse"]["weight_bytes"] < res["dense"]["weight_bytes"]
    assert res["tokens_match"], res
    assert res["max_logit_rel_diff"] < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_run_bench_gpu_graphs_and_kernels():
    """On a GPU: both runs capture the decode step in a CUDA graph, the sparse one through the
    Triton kernels (fp16, M = 2), and dense and sparse agree."""
    model = random_model("llama-tiny", dtype=torch.float16, device="cuda")
    res = run_bench(model, None, batch=2, prompt_len=16, new_tokens=8, device="cuda")
    assert res["dense"]["cuda_graph"] and res["sparse"]["cuda_graph"], res
    assert res["swapped_layers"] == 2 * 7
    assert res["max_logit_rel_diff"] < 1e-2
    assert res["token_match_fraction"] >= 0.9
    assert res["dense"]["peak_memory_bytes"] > 0
