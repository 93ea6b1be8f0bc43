"""2:4 runtime: Sparse24Linear against nn.Linear, model swaps both ways, the dispatch tables,
the custom op under torch.compile, and the compiled decode runtime (eager on CPU) against a
plain full-recompute greedy loop."""

import pytest
import torch
from torch import nn

from sparsekit.workflows.bench import random_model
from sparsekit.kernels.sparse24 import mask_24_magnitude, pack_24
from sparsekit.runtime import dispatch24
from sparsekit.runtime.decode import compile_decode
from sparsekit.runtime.sparse24_linear import (
    Sparse24Linear,
    densify_model_24,
    sparsify_model_24,
)

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def linear24(k, n, bias=True, seed=0, dtype=torch.float32, device="cpu"):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias, dtype=dtype, device=device)
    with torch.no_grad():
        lin.weight.mul_(mask_24_magnitude(lin.weight))
    return lin.requires_grad_(False)


def test_sparse24_linear_is_the_linear_on_cpu():
    lin = linear24(100, 37)
    s = Sparse24Linear.from_dense(lin)
    x = torch.randn(2, 5, 100)
    assert torch.equal(s(x), lin(x))  # CPU path: reference decompress + F.linear
    assert torch.equal(s.to_dense_weight(), lin.weight)
    assert set(dict(s.named_buffers())) == {"values", "meta", "bias"}
    assert s.values.dim() == 3 and s.values.shape[1] == 37  # panel layout [P, N, 2*PG]
    dense_bytes = lin.weight.numel() * 2
    packed_bytes = s.values.half().numel() * 2 + s.meta.numel() * 2
    assert packed_bytes <= dense_bytes * (9 / 16) * (128 / 100) + 1  # K=100 pads to 128
    back = s.to_linear()
    assert torch.equal(back.weight, lin.weight) and torch.equal(back.bias, lin.bias)
    s16 = Sparse24Linear.from_packed(pack_24(lin.weight.half()), None)
    assert s16.values.dtype == torch.float16 and s16.to(torch.float32).values.dtype == \
        torch.float32
    assert s16.meta.dtype == torch.int16 and not s16.enable_cusparselt()  # CPU: no copy
    with pytest.raises(ValueError, match="not 2:4"):
        Sparse24Linear.from_dense(nn.Linear(16, 8))


def test_sparsify_and_densify_swap_only_24():
    torch.manual_seed(0)
    model = nn.Sequential(linear24(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(4, 16)
    before = model(x)
    assert sparsify_model_24(model) == ["0"]
    assert isinstance(model[0], Sparse24Linear) and type(model[2]) is nn.Linear
    assert torch.equal(model(x), before)
    assert densify_model_24(model) == ["0"]
    assert type(model[0]) is nn.Linear and torch.equal(model(x), before)
    assert sparsify_model_24(nn.Sequential(linear24(16, 32)), names=["other"]) == []


def test_dispatch_is_a_pure_function_of_the_tables():
    h100 = (9, 0)
    assert dispatch24.choose(1, torch.bfloat16, None) == ("torch", None)
    for m in (1, 4):
        backend, cfg = dispatch24.choose(m, torch.bfloat16, h100)
        assert backend == "triton" and cfg.kernel == "gemv"
    for m in (5, 16, 17, 256, 8192):
        backend, cfg = dispatch24.choose(m, torch.float16, h100)
        assert backend == "triton" and cfg.kernel == "mma" and (m > 64 or cfg.bm >= m)
    dispatch24.check_table(dispatch24.DEFAULT_DISPATCH)
    table = ((1, "triton", "gemv:bn8:bg64:o4:s:p1:w4:s1"),
             (1024, "triton", "mma:bn64:bg16:bm64:o4:s:p1:w8:s3"),
             (None, "cusparselt", "mma:bn64:bg16:bm128:o2:s:p1:w8:s3"))
    dispatch24.check_table(table)
    dispatch24.DISPATCH[(9, 0, "bfloat16")] = table
    try:
        assert dispatch24.choose(1, torch.bfloat16, h100)[1].kernel == "gemv"
        assert dispatch24.choose(2, torch.bfloat16, h100)[1].bm == 64
        assert dispatch24.choose(1025, torch.bfloat16, h100)[0] == "cusparselt"
        assert dispatch24.choose(2, torch.float16, h100)[1].bm == 16  # other dtype: default
    finally:
        del dispatch24.DISPATCH[(9, 0, "bfloat16")]
    for bad, why in [(((8, "triton", "gemv:bn8:bg64:o4:s:p1:w4:s1"),
                       (None, "triton", "mma:bn64:bg16:bm16:o4:s:p1:w8:s3")), "M <= 4"),
                     (((None, "dense", "mma:bn64:bg16:bm16:o4:s:p1:w8:s3"),), "unknown backend"),
                     (((4, "triton", "gemv:bn8:bg64:o4:s:p1:w4:s1"),), "max_m None")]:
        with pytest.raises(ValueError, match=why):
            dispatch24.check_table(bad)


def test_custom_op_traces_as_one_node():
    """torch.compile sees sparsekit::s24_linear as an opaque op (fake impl gives shapes):
    fullgraph tracing succeeds and the compiled result equals eager."""
    lin = linear24(64, 24)
    s = Sparse24Linear.from_dense(lin)
    seen = []

    def backend(gm, example_inputs):
        seen.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return gm.forward

    torch._dynamo.reset()
    f = torch.compile(lambda x: torch.relu(s(x)) * 2, backend=backend, fullgraph=True)
    x = torch.randn(3, 7, 64)
    assert torch.equal(f(x), torch.relu(lin(x)) * 2)
    assert len(seen) == 1 and sum("s24_linear" in t for t in seen[0]) == 1


def tiny(dtype=torch.float32):
    return random_model("llama-tiny", dtype=dtype, device="cpu")


@torch.no_grad()
def greedy_reference(model, ids, new):
    seq = ids.clone()
    for _ in range(new):
        seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return seq


def test_decode_runtime_matches_full_recompute_on_cpu():
    model = tiny()
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    ref = greedy_reference(model, ids, 6)
    rt = compile_decode(model, batch_size=2, max_length=32, record_rows=2, record_steps=8)
    assert not rt.compiled and rt._graph is None  # CPU: eager
    assert torch.equal(rt.generate(ids, 6), ref)
    # teacher forcing reproduces the greedy tokens and the full-forward logits at every step
    rt.prefill(ids)
    assert torch.equal(rt.decode(5, teacher=ref[:, 7:]), ref[:, 8:])
    with torch.no_grad():
        full = model(input_ids=ref[:, :12]).logits[:, 7:12]
    torch.testing.assert_close(rt.recorded_logits(5), full, rtol=1e-5, atol=1e-5)
    # a second generate on the same runtime starts clean
    assert torch.equal(rt.generate(ids, 6), ref)
    with pytest.raises(ValueError, match="batches of 2"):
        rt.prefill(ids[:1])


@pytest.mark.parametrize("prompt", [5, 12], ids=["crosses-window", "window-full"])
def test_decode_runtime_sliding_window_model(prompt):
    """Gemma-3 (sliding window 8 in the tiny config): the window fills up during decoding
    (prompt 5) or before it (prompt 12); either way the tokens are the full-recompute ones,
    and a second run on the same runtime too."""
    from conftest import tiny_model

    model = tiny_model("gemma3")
    ids = torch.randint(3, 500, (2, prompt), generator=torch.Generator().manual_seed(0))
    ref = greedy_reference(model, ids, 9)
    rt = compile_decode(model, 2, 32)
    assert torch.equal(rt.generate(ids, 9), ref)
    assert torch.equal(rt.generate(ids, 9), ref)


def test_compiled_sparse_step_equals_eager_dense_without_recompiling():
    """The 2:4 model's decode step traced by dynamo (eager backend: no code generation)
    gives the dense model's tokens; the step compiles once, not once per token."""
    model = tiny()
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(2))
    ref = greedy_reference(model, ids, 8)
    assert len(sparsify_model_24(model)) == 14
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    rt = compile_decode(model, batch_size=1, max_length=24, compile=True, backend=backend)
    assert torch.equal(rt.generate(ids, 4), ref[:, :9])
    n = len(graphs)
    assert rt.compiled and rt.compile_error is None and 1 <= n <= 2
    assert torch.equal(rt.generate(ids, 8), ref)
    assert len(graphs) == n  # more steps, no new graphs
    torch._dynamo.reset()


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_sparse24_linear_gpu_every_range(dtype):
    lin = linear24(1024, 608, dtype=dtype, device="cuda")
    s = Sparse24Linear.from_dense(lin)
    for m in (1, 3, 5, 16, 40, 100, 700, 2048):
        x = torch.randn(m, 1024, device="cuda", dtype=dtype)
        ref = x.double() @ lin.weight.double().T + lin.bias.double()
        y = s(x)
        assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2, m
    if s.enable_cusparselt():
        x = torch.randn(2048, 1024, device="cuda", dtype=dtype)
        from sparsekit.kernels import cusparselt

        y = cusparselt.linear(x, s._cslt, 608, s.bias)
        ref = x.double() @ lin.weight.double().T + lin.bias.double()
        assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2


@gpu
@pytest.mark.gpu
def test_decode_runtime_gpu_compiled_graph_matches_eager():
    model = random_model("llama-tiny", dtype=torch.float16, device="cuda")
    sparsify_model_24(model)
    ids = torch.randint(0, 256, (2, 16), device="cuda")
    eager = compile_decode(model, 2, 64, compile=False, cuda_graph=False).generate(ids, 12)
    torch._dynamo.reset()
    rt = compile_decode(model, 2, 64)
    out = rt.generate(ids, 12)
    assert rt.compiled and rt._graph is not None, (rt.compile_error, rt.graph_error)
    assert (out == eager).float().mean() >= 0.9  # fused fp16 math may flip a near tie
    torch._dynamo.reset()
