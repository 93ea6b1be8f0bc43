"""Runtime activation sparsity: the wrapper equals the plain-torch reference, decode-only mode
leaves prefill dense, counters, the installer and state_dict names, 2:4 weights under the mask,
and the custom-op path (counters off) giving exactly the mask-then-linear result on CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from torch import nn

from sparsekit.errors import UsageError
from sparsekit.runtime.act_sparse import ActSparse, activation_modules, activation_sparsity_report, install_activation_sparsity, remove_activation_sparsity, set_activation_mode
from sparsekit.kernels.act_sparse import act_sparse_reference, masked_linear_reference
from sparsekit.runtime.sparse24_linear import Sparse24Linear


def _linear(k=24, n=10, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    return lin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["scalar", "channel", "scaled"])
def test_masked_linear_equals_reference(dtype, kind):
    lin = _linear().to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 24, generator=g).to(dtype)
    thr, scale = 0.6, None
    if kind == "channel":
        thr = torch.rand(24, generator=g)
        thr[3] = float("inf")
    if kind == "scaled":
        scale = torch.rand(24, generator=g) * 2
        scale[0] = 0.0
    m = ActSparse(lin, thr, scale)
    got = m(x)
    want = masked_linear_reference(x, lin.weight, lin.bias, thr, scale)
    assert torch.equal(got, want)
    masked = act_sparse_reference(x, thr, scale)
    zeroed = int((masked == 0).sum())
    assert int(m.zeroed) == zeroed and int(m.entries) == x.numel() and int(m.tokens_sparse) == 15
    assert m.zeroed_fraction == zeroed / x.numel()
    if kind == "channel":
        assert torch.all(masked[..., 3] == 0)
    if kind == "scaled":
        assert torch.all(masked[..., 0] == 0)
    # the reference really masks something and keeps something
    assert 0 < zeroed < x.numel()


def test_output_site_masks_the_output():
    act = nn.SiLU()
    thr = torch.linspace(0.0, 0.5, 12)
    m = ActSparse(act, thr, where="output")
    x = torch.randn(4, 12)
    assert torch.equal(m(x), act_sparse_reference(act(x), thr))


def test_decode_only_by_shape_when_standalone():
    lin = _linear()
    m = ActSparse(lin, 0.7, mode="decode")
    prefill = torch.randn(2, 6, 24)
    decode = torch.randn(2, 1, 24)
    assert torch.equal(m(prefill), lin(prefill))
    assert torch.equal(m(decode), masked_linear_reference(decode, lin.weight, lin.bias, 0.7))
    assert int(m.tokens_dense) == 12 and int(m.tokens_sparse) == 2
    m.enabled = False
    assert torch.equal(m(decode), lin(decode))


def _spec(model, where_threshold=0.3):
    names = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear) and ".layers." in n]
    spec = {"method": "teal", "mode": "all", "sites": {n: {"where": "input"} for n in names}}
    tensors = {f"{n}.threshold": torch.tensor(where_threshold) for n in names}
    return spec, tensors


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_decode_mode_in_generate_keeps_prefill_dense(arch):
    model = tiny_model(arch)
    ids = torch.randint(3, 500, (2, 9))
    with torch.no_grad():
        dense_logits = model(input_ids=ids).logits
    spec, tensors = _spec(model)
    install_activation_sparsity(model, spec, tensors, mode="decode")
    with torch.no_grad():
        # a prefill forward is dense: bit-identical logits
        assert torch.equal(model(input_ids=ids).logits, dense_logits)
        for m in activation_modules(model).values():
            assert int(m.tokens_sparse) == 0 and int(m.tokens_dense) == 18
            m.reset_counters()
        # generate: prefill (9 positions) dense, then 4 batched decode steps (2 sequences) sparse
        model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0,
                       attention_mask=torch.ones_like(ids))
    for name, m in activation_modules(model).items():
        assert int(m.tokens_dense) == 18, name       # OPT's fc1/fc2 see [B*T, d]: still per layer call
        assert int(m.tokens_sparse) == 8, name
        assert 0 < int(m.zeroed) < int(m.entries)
    report = activation_sparsity_report(model)
    assert report["self_attn.q_proj"]["sparsified_tokens"] == pytest.approx(8 / 26)
    # mode all: the same prefill is now sparse
    set_activation_mode(model, "all")
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, dense_logits)


def test_installer_round_trip_state_dict_and_remove(tmp_path):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(3, 500, (1, 7))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    spec, tensors = _spec(model)
    wrappers = install_activation_sparsity(model, spec, tensors)
    assert len(wrappers) == 14 and isinstance(model.model.layers[0].self_attn.q_proj, ActSparse)
    # names and values of the wrapped model's state are the plain model's
    sd = model.state_dict()
    assert list(sd) == list(before) and all(torch.equal(sd[k], before[k]) for k in sd)
    model.load_state_dict(before)
    assert model.model.layers[0].self_attn.q_proj.weight is model.model.layers[0].self_attn.q_proj.inner.weight
    # save_pretrained with the wrappers in writes a plain checkpoint
    model.save_pretrained(tmp_path)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, dense)
    # reinstalling replaces thresholds, no double wrapping
    install_activation_sparsity(model, spec, {k: torch.tensor(0.0) for k in tensors})
    assert not isinstance(model.model.layers[0].self_attn.q_proj.inner, ActSparse)
    assert remove_activation_sparsity(model) == 14
    assert not activation_modules(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, dense)


def test_installer_errors():
    model = tiny_model("llama")
    spec, tensors = _spec(model)
    name = next(iter(spec["sites"]))
    with pytest.raises(UsageError, match="lack tensor"):
        install_activation_sparsity(model, spec, {k: v for k, v in tensors.items() if not k.startswith(name + ".")})
    bad = dict(tensors)
    bad[f"{name}.threshold"] = torch.zeros(5)
    with pytest.raises(UsageError, match="another model"):
        install_activation_sparsity(model, spec, bad)
    with pytest.raises(UsageError, match="not a module"):
        install_activation_sparsity(model, {"sites": {"model.nope": {}}}, {"model.nope.threshold": torch.tensor(1.0)})
    with pytest.raises(UsageError, match="mode"):
        install_activation_sparsity(model, spec, tensors, mode="prefill")


def test_wraps_any_module_with_forward():
    class Doubler(nn.Module):
        in_features = 8

        def forward(self, x):
            return 2 * x

    m = ActSparse(Doubler(), 0.5)
    x = torch.randn(3, 8)
    assert torch.equal(m(x), 2 * act_sparse_reference(x, 0.5))
    assert m.in_features == 8  # attributes of the wrapped module pass through


def _linear_24(k=32, n=12):
    lin = _linear(k, n)
    with torch.no_grad():  # make the weight 2:4: keep the 2 largest of every 4
        w = lin.weight.view(n, k // 4, 4)
        idx = w.abs().topk(2, dim=-1).indices
        lin.weight.copy_(torch.zeros_like(w).scatter(-1, idx, w.gather(-1, idx)).view(n, k))
    return lin


@pytest.mark.parametrize("count", [True, False])
def test_wraps_the_24_linear(count):
    """2:4 weights and activation sparsity together: mask, then the 2:4 linear."""
    lin = _linear_24()
    s24 = Sparse24Linear.from_dense(lin)
    thr = torch.rand(32) * 0.8
    m = ActSparse(s24, thr, count=count)
    x = torch.randn(2, 1, 32)
    with torch.no_grad():
        got = m(x)
    torch.testing.assert_close(got, masked_linear_reference(x, lin.weight, lin.bias, thr), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, lin(x), atol=1e-5, rtol=1e-5)


@pytest.fixture
def op_calls(monkeypatch):
    """Count the calls of the activation-sparse op made by the wrapper."""
    import sparsekit.runtime.act_sparse as mod

    calls = []
    real = mod.act_sparse_linear

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(mod, "act_sparse_linear", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["scalar", "channel", "scaled"])
def test_op_path_is_bit_for_bit_the_masked_linear(dtype, kind, op_calls):
    """Without counters an nn.Linear input site runs the op; on CPU its masked dense product is
    exactly what mask-then-linear (the counting path) gives."""
    lin = _linear().to(dtype)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 24, generator=g).to(dtype)
    thr = torch.rand(24, generator=g) if kind == "channel" else 0.6
    scale = torch.rand(24, generator=g) * 2 if kind == "scaled" else None
    fast = ActSparse(lin, thr, scale, count=False)
    counted = ActSparse(lin, thr, scale, count=True)
    with torch.no_grad():
        got = fast(x)
        assert op_calls == [(15, 24)]
        want = counted(x)
        assert len(op_calls) == 1  # counting keeps the mask-then-linear path
    assert got.shape == (3, 5, 10) and got.dtype == dtype
    assert torch.equal(got, want)
    assert torch.equal(got, masked_linear_reference(x, lin.weight, lin.bias, thr, scale))
    assert int(fast.entries) == 0 and int(counted.entries) == x.numel()


def test_op_path_respects_mode_enabled_and_autograd(op_calls):
    lin = _linear()
    m = ActSparse(lin, 0.7, mode="decode", count=False)
    prefill, decode = torch.randn(2, 6, 24), torch.randn(2, 1, 24)
    with torch.no_grad():
        assert torch.equal(m(prefill), lin(prefill)) and op_calls == []    # prefill stays dense
        assert torch.equal(m(decode), masked_linear_reference(decode, lin.weight, lin.bias, 0.7))
        assert op_calls == [(2, 24)]
        m.enabled = False
        assert torch.equal(m(decode), lin(decode)) and len(op_calls) == 1
    # autograd needs a backward: the differentiable mask-then-linear path, same values
    m.enabled = True
    y = m(decode)
    assert len(op_calls) == 1
    y.sum().backward()
    assert lin.weight.grad is not None
    assert torch.equal(y.detach(), masked_linear_reference(decode, lin.weight, lin.bias, 0.7))


def test_installed_model_without_counters_equals_counting_model(op_calls):
    """A loaded model (counters off) runs every linear site through the op: same logits."""
    model = tiny_model("llama")
    ids = torch.randint(3, 500, (2, 7))
    spec, tensors = _spec(model)
    install_activation_sparsity(model, spec, tensors, count=True)
    with torch.no_grad():
        counted = model(input_ids=ids).logits
        assert op_calls == []
        install_activation_sparsity(model, spec, tensors, count=False)
        fast = model(input_ids=ids).logits
    assert len(op_calls) == 14 and torch.equal(fast, counted)
