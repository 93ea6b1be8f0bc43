"""sparsekit bench on a tiny random 2:4 Llama on CPU: the self-check passes for the real 2:4
path, fails loudly for a corrupted 2:4 layer, and a model that already holds 2:4 layers (as
an exported directory loads) is benchmarked against its dense twin. Activation sparsity
(synthetic thresholds, or thresholds saved with the model), alone and on 2:4 weights, is
checked against the reference run of the same function; `bench` is the library call."""

import pytest
import torch
from conftest import scramble_one_layer, tiny_model

from sparsekit.workflows.bench import (
    CPU_ACT_NOTE,
    CPU_BOTH_NOTE,
    CPU_NOTE,
    TOLERANCE,
    BenchCheckError,
    bench,
    random_model,
    run_bench,
)
from sparsekit.errors import UsageError
from sparsekit.kernels.sparse24 import check_24
from sparsekit.runtime.act_sparse import ActSparse, activation_modules, count_activation, install_activation_sparsity
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


def test_bench_fails_loudly_when_the_sparse_path_is_wrong():
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu")
    with pytest.raises(BenchCheckError, match="self-check failed.*tolerance 0.0001 for float32") \
            as info:
        run_bench(model, None, batch=1, prompt_len=8, new_tokens=4, device="cpu",
                  corrupt=scramble_one_layer)
    res = info.value.result
    assert not res["check_passed"] and res["max_logit_rel_diff"] > 100 * res["tolerance"]
    # the same numbers without raising, for a report
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu")
    res2 = run_bench(model, None, batch=1, prompt_len=8, new_tokens=4, device="cpu",
                     corrupt=scramble_one_layer, check=False)
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


def test_bench_times_synthetic_activation_sparsity_alone():
    """A dense model with --activation: TEAL-style thresholds from the bench prompt, the dense
    run without them, the sparse run checked against the reference run (CPU: the same masked
    dense product, so exactly equal)."""
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu", prune=False)
    res = run_bench(model, None, batch=2, prompt_len=8, new_tokens=5, device="cpu", activation=0.5)
    act = res["activation"]
    assert act["sites"] == 14 and act["target"] == 0.5 and act["method"] == "teal"
    assert act["mode"] == "decode" and act["synthetic"] is True
    assert act["reference"]["decode_tokens_per_s"] > 0 and act["reference"]["compiled"] is False
    assert res["swapped_layers"] == 0 and res["check_passed"] and res["max_logit_rel_diff"] == 0.0
    assert res["logit_rows_compared"] == 2 + 2 * 4 and res["token_agreement"] == 1.0
    assert res["note"] == CPU_ACT_NOTE
    for key in ("speedup_decode", "speedup_prefill", "memory_ratio", "dense", "sparse", "config"):
        assert key in res
    # the wrappers stay installed (counters off, as loaded models have them) and zero about half
    # of every linear's decode inputs
    wrappers = activation_modules(model)
    assert len(wrappers) == 14 and all(w.enabled and not w.count for w in wrappers.values())
    count_activation(model)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 256, (4, 1)))   # standalone: one position = decode
    fractions = [w.zeroed_fraction for w in wrappers.values()]
    assert all(0.2 < f < 0.8 for f in fractions), fractions


def test_bench_activation_sparsity_on_24_weights():
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu")
    res = run_bench(model, None, batch=1, prompt_len=8, new_tokens=4, device="cpu", activation=0.4)
    assert res["swapped_layers"] == 14 and res["activation"]["sites"] == 14
    assert res["check_passed"] and res["max_logit_rel_diff"] == 0.0
    assert all(isinstance(w.inner, Sparse24Linear) for w in activation_modules(model).values())
    assert res["note"] == CPU_BOTH_NOTE


def _wrong_threshold(model):
    """Zero every input of one site in the sparse run: what a wrong mask in a kernel would do."""
    site = model.model.layers[1].mlp.down_proj
    assert isinstance(site, ActSparse)
    site.set_threshold(float("inf"))


def test_bench_activation_fails_loudly_when_the_sparse_path_is_wrong():
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu", prune=False)
    with pytest.raises(BenchCheckError, match="reference run") as info:
        run_bench(model, None, batch=1, prompt_len=8, new_tokens=4, device="cpu", activation=0.5,
                  corrupt=_wrong_threshold)
    res = info.value.result
    assert not res["check_passed"] and res["max_logit_rel_diff"] > 100 * res["tolerance"]
    assert res["activation"]["sites"] == 14
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu")
    res2 = run_bench(model, None, batch=1, prompt_len=8, new_tokens=4, device="cpu", activation=0.5,
                     corrupt=_wrong_threshold, check=False)
    assert not res2["check_passed"] and res2["swapped_layers"] == 14


def test_bench_of_a_model_with_installed_thresholds_and_no_24_weights():
    """Thresholds but no exact-2:4 linear is benchable; --activation on top of them is refused."""
    model = random_model("llama-tiny", dtype=torch.float32, device="cpu", prune=False)
    names = [f"model.layers.{i}.{leaf}" for i in range(2) for leaf in ("self_attn.q_proj", "mlp.down_proj")]
    spec = {"method": "teal", "mode": "all", "sites": {n: {"where": "input"} for n in names}}
    install_activation_sparsity(model, spec, {f"{n}.threshold": torch.tensor(0.05) for n in names})
    res = run_bench(model, None, batch=1, prompt_len=6, new_tokens=3, device="cpu",
                    activation_recipe={"method": "teal", "target": 0.3})
    assert res["check_passed"] and res["swapped_layers"] == 0
    assert res["activation"] == {**res["activation"], "sites": 4, "target": 0.3, "method": "teal",
                                 "mode": "all", "synthetic": False}
    assert all(w.count for w in activation_modules(model).values())   # the counters are given back
    with pytest.raises(UsageError, match="already has activation thresholds"):
        run_bench(model, None, batch=1, prompt_len=6, new_tokens=3, device="cpu", activation=0.5)


def test_bench_of_a_saved_model_with_thresholds(tiny_tokenizer, tmp_path):
    """`bench(DIR)` of a directory with saved thresholds (scalar, WINA scale, a per-channel output
    site): they are loaded and benchmarked; with activation= they are left out for the synthetic ones."""
    from sparsekit.files.modeldir import write_model_dir
    from sparsekit.files.thresholds import ACTIVATION_FILE, activation_file

    path = tmp_path / "with-thresholds"
    g = torch.Generator().manual_seed(0)
    l0 = "model.layers.0"
    tensors = {f"{l0}.self_attn.q_proj.threshold": torch.tensor(0.5),
               f"{l0}.mlp.down_proj.threshold": torch.tensor(0.02),
               f"{l0}.mlp.down_proj.scale": torch.rand(128, generator=g) * 2,
               f"{l0}.mlp.act_fn.threshold": torch.rand(128, generator=g) * 0.1}
    sites = {f"{l0}.self_attn.q_proj": {"where": "input"}, f"{l0}.mlp.down_proj": {"where": "input"},
             f"{l0}.mlp.act_fn": {"where": "output"}}
    # written as `sparsekit prune --activation` writes it: the thresholds file beside the weights
    section, data, metadata = activation_file(tensors, {"method": "wina", "target": 0.4, "mode": "decode",
                                                        "sites": sites})
    write_model_dir(tiny_model("llama"), tiny_tokenizer, path, {"activation": section},
                    side_files={ACTIVATION_FILE: (data, metadata)})
    stages = []
    res = bench(str(path), batch=2, prompt=8, new=4, dtype="float32", device="cpu", eager=True,
                progress=lambda stage, done=None, total=None: stages.append((stage, done, total)))
    act = res["activation"]
    assert (act["sites"], act["target"], act["method"]) == (3, 0.4, "wina")
    assert act["mode"] == "decode" and act["synthetic"] is False
    assert res["check_passed"] and res["swapped_layers"] == 0
    assert [s for s, _, _ in stages if s.startswith("benchmarking")] == [
        "benchmarking dense", "benchmarking the reference (same thresholds, masked dense product)",
        "benchmarking sparse", "benchmarking sparse"]
    assert stages[-1][1:] == (3, 3) and any(s.startswith("loading") for s, _, _ in stages)
    res = bench(str(path), prompt=8, new=3, dtype="float32", device="cpu", eager=True, activation=0.5)
    assert res["activation"]["sites"] == 14 and res["activation"]["synthetic"] and res["check_passed"]


def test_bench_library_call_on_a_random_model():
    stages = []
    res = bench(random="llama-tiny", batch=1, prompt=8, new=3, dtype="float32", device="cpu", eager=True,
                progress=lambda *a: stages.append(a[0]))
    assert res["check_passed"] and res["swapped_layers"] == 14 and res["activation"] is None
    assert stages[0] == "building random llama-tiny" and stages[-1] == "benchmarking sparse"
    assert res["dense"]["compiled"] is False and res["note"] == CPU_NOTE


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "give a MODEL or --random"),
    (dict(model="x", random="llama-tiny"), "give a MODEL or --random"),
    (dict(random="llama-tiny", prompt=0), "at least 1"),
    (dict(random="llama-tiny", dtype="int8"), "unknown --dtype"),
    (dict(random="llama-tiny", activation=1.0), "outside \\(0, 1\\)"),
    (dict(random="llama-tiny", activation=0.0), "outside \\(0, 1\\)"),
    (dict(random="llama-tiny", device="cpu", cusparselt=True), "needs a GPU"),
    (dict(random="no-such-size", device="cpu"), "not a known size"),
])
def test_bench_library_call_refuses_bad_options_in_one_line(kwargs, message):
    stages = []
    with pytest.raises(UsageError, match=message) as info:
        bench(**kwargs, progress=lambda *a: stages.append(a[0]))
    assert "\n" not in str(info.value)
    assert not [s for s in stages if s.startswith("benchmarking")]


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("prune", [False, True])
@pytest.mark.parametrize("batch", [1, 5])
def test_run_bench_gpu_activation_sparsity(batch, prune):
    """On a GPU: the three runs compile and capture the decode step; the sparse one runs the
    Triton activation-sparse product (M = batch <= 16), checked in bf16 against the reference."""
    model = random_model("llama-tiny", dtype=torch.bfloat16, device="cuda", prune=prune)
    res = run_bench(model, None, batch=batch, prompt_len=16, new_tokens=8, device="cuda", activation=0.5)
    for run in (res["dense"], res["sparse"], res["activation"]["reference"]):
        assert run["cuda_graph"] and run["compiled"], run
    assert res["check_passed"] and res["activation"]["sites"] == 14
    assert res["swapped_layers"] == (14 if prune else 0)
