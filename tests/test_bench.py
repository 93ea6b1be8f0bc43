"""sparsekit bench on a tiny random 2:4 Llama on CPU: the self-check passes for the real 2:4
path, fails loudly for a corrupted 2:4 layer, and a model that already holds 2:4 layers (as
an exported directory loads) is benchmarked against its dense twin."""

import json

import pytest
import torch

from sparsekit.workflows.bench import CPU_NOTE, TOLERANCE, BenchCheckError, random_model, run_bench
from sparsekit.errors import UsageError
from sparsekit.kernels.sparse24 import check_24
from sparsekit.runtime.sparse24_linear import Sparse24Linear, sparsify_model_24


def test_random_model_is_24():
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu")
    mlp = model.model.layers[0].mlp
    check_24(mlp.down_proj.weight.detach())
    assert (mlp.down_proj.weight == 0).float().mean().item() >= 0.5


def test_bench_cpu_checks_itself():
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu")
    res = run_bench(model, None, batch=2, prompt_len=8, new_tokens=6, device="cpu")
    assert res["swapped_layers"] == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert sum(isinstance(m, Sparse24Linear) for m in model.modules()) == 14
    for run in (res["dense"], res["sparse"]):
        assert run["cuda_graph"] is False and run["compiled"] is False
        assert run["peak_memory_bytes"] is None
    assert res["sparse"]["weight_bytes"] < res["dense"]["weight_bytes"]
    # CPU: the 2:4 layers compute exactly the dense twin, prefill and 5 teacher-forced steps
    assert res["check_passed"] and res["max_logit_rel_diff"] == 0.0
    assert res["logit_rows_compared"] == 2 + 2 * 5
    assert res["token_agreement"] == 1.0
    assert res["tolerance"] == TOLERANCE[torch.float32]
    assert res["note"] == CPU_NOTE


def _scramble_one_layer(model):
    """Reverse the output rows of one 2:4 layer: a wrong tile order, as a kernel bug would."""
    layer = model.model.layers[1].mlp.down_proj
    assert isinstance(layer, Sparse24Linear)
    with torch.no_grad():
        layer.values.copy_(layer.values.flip(1))
        layer.meta.copy_(layer.meta.flip(1))


def test_bench_fails_loudly_when_the_sparse_path_is_wrong():
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu")
    with pytest.raises(BenchCheckError, match="self-check failed.*tolerance 0.0001 for float32") \
            as info:
        run_bench(model, None, batch=1, prompt_len=8, new_tokens=4, device="cpu",
                  corrupt=_scramble_one_layer)
    res = info.value.result
    assert not res["check_passed"] and res["max_logit_rel_diff"] > 100 * res["tolerance"]
    # the same numbers without raising, for a report
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu")
    res2 = run_bench(model, None, batch=1, prompt_len=8, new_tokens=4, device="cpu",
                     corrupt=_scramble_one_layer, check=False)
    assert res2["max_logit_rel_diff"] == res["max_logit_rel_diff"]


def test_bench_of_a_model_that_holds_24_layers():
    """What `sparsekit bench OUT` runs for a 2:4 export: the loaded Sparse24Linear layers are
    turned into their dense twin for the dense run, then swapped back."""
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu")
    ref = random_model("llama-tiny", dtype=torch.float32, device="cpu")
    assert len(sparsify_model_24(model)) == 14
    res = run_bench(model, None, batch=1, prompt_len=6, new_tokens=3, device="cpu")
    assert res["swapped_layers"] == 14 and res["check_passed"]
    assert res["dense"]["weight_bytes"] == sum(p.numel() * 4 for p in ref.parameters()) \
        + sum(b.numel() * b.element_size() for b in ref.buffers())


def test_bench_refuses_a_model_without_24_layers():
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu", prune=False)
    with pytest.raises(UsageError, match="no linear layer whose weight is exactly 2:4"):
        run_bench(model, None, batch=1, prompt_len=4, new_tokens=2, device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch", [1, 5])
def test_run_bench_gpu_compiled_graphs_and_kernels(batch):
    """On a GPU: both runs compile the decode step and capture it in a CUDA graph, the
    sparse one through the Triton kernels (gemv at batch 1, mma at 5), and the self-check
    passes in bf16."""
    model = random_model("llama-tiny", dtype=torch.bfloat16, device="cuda")
    res = run_bench(model, None, batch=batch, prompt_len=16, new_tokens=8, device="cuda")
    for run in (res["dense"], res["sparse"]):
        assert run["cuda_graph"] and run["compiled"], run
        assert run["peak_memory_bytes"] > 0
    assert res["swapped_layers"] == 14 and res["check_passed"]
    assert "note" not in res


def test_cli_bench_on_the_cpu_says_where_kernels_pay_off(cli, monkeypatch):
    code, stdout, _ = cli("bench", "--random", "llama-tiny", "--prompt", 16, "--new", 4, "--device", "cpu",
                          "--dtype", "float32")
    assert code == 0, stdout
    text = " ".join(stdout.split())  # the console wraps long lines
    assert "2:4 logits within 0.0001 of dense" in text and "Note:" in text and "GPU" in text
    code, stdout, _ = cli("bench", "--random", "llama-tiny", "--prompt", 16, "--new", 4, "--device", "cpu",
                          "--dtype", "float32", "--json")
    result = json.loads(stdout)
    assert code == 0 and result["check_passed"] and result["max_logit_rel_diff"] <= result["tolerance"]

    # a wrong sparse path is exit code 1 with the result and a message, not a success
    import sparsekit.workflows.bench

    real = sparsekit.workflows.bench.run_bench

    def broken(model, *a, **k):
        return real(model, *a, corrupt=_scramble_one_layer, **k)

    monkeypatch.setattr(sparsekit.workflows.bench, "run_bench", broken)
    code, stdout, stderr = cli("bench", "--random", "llama-tiny", "--prompt", 16, "--new", 4, "--device", "cpu",
                               "--dtype", "float32")
    assert code == 1 and "does not compute the dense model" in stderr and "Traceback" not in stderr
