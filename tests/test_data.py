"""Data sources and window sampling."""

import json

import pytest
import torch

from conftest import data_file
from sparsekit.data import calibration_windows, load_rows, tokenize_rows, windows
from sparsekit.errors import UsageError


def test_local_formats_give_the_same_rows(tmp_path):
    rows = ["first row", "", "third row with more words"]
    (tmp_path / "a.txt").write_text("\n".join(rows) + "\n")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": r}) for r in rows) + "\n")
    (tmp_path / "a.json").write_text(json.dumps([{"text": r} for r in rows]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": rows}), tmp_path / "a.parquet")
    for suffix in ("txt", "jsonl", "json", "parquet"):
        assert load_rows(str(tmp_path / f"a.{suffix}")) == rows
    # a folder reads its files in name order
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "2.txt").write_text("second\n")
    (folder / "1.txt").write_text("first\n")
    assert load_rows(str(folder)) == ["first", "second"]


def test_bad_sources(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_rows(str(tmp_path / "missing.txt"))
    (tmp_path / "bad.jsonl").write_text('{"title": "x"}\n')
    with pytest.raises(UsageError, match="'text' field"):
        load_rows(str(tmp_path / "bad.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UsageError, match="unsupported data file type"):
        load_rows(str(tmp_path / "x.csv"))
    with pytest.raises(UsageError, match="only makes calibration data"):
        load_rows("self")


def test_windows_drop_the_remainder():
    ids = torch.arange(23)
    w = windows(ids, 5)
    assert w.shape == (4, 5) and w[-1, -1].item() == 19
    assert windows(ids, 5, max_windows=2).shape == (2, 5)
    with pytest.raises(UsageError, match="fewer than one window"):
        windows(ids, 24)


def test_calibration_sampling(tiny_tokenizer):
    path = str(data_file("valid"))
    ids = tokenize_rows(tiny_tokenizer, load_rows(path))
    first = calibration_windows(tiny_tokenizer, path, 4, 32, sampling="first")
    assert torch.equal(first, ids[:128].view(4, 32))
    a = calibration_windows(tiny_tokenizer, path, 6, 32, seed=3)
    b = calibration_windows(tiny_tokenizer, path, 6, 32, seed=3)
    c = calibration_windows(tiny_tokenizer, path, 6, 32, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every random window is a contiguous slice of the tokenized text
    every_window = ids.unfold(0, 32, 1)
    for row in a:
        assert (every_window == row).all(dim=1).any()
    with pytest.raises(UsageError, match="--sampling first needs"):
        calibration_windows(tiny_tokenizer, path, 10**6, 32, sampling="first")


def test_self_generated_calibration(tiny_tokenizer):
    from conftest import tiny_model

    model = tiny_model("llama")
    seen = []
    w = calibration_windows(tiny_tokenizer, "self", 3, 16, seed=0, model=model,
                            progress=lambda done, total: seen.append((done, total)))
    assert w.shape == (3, 16)
    assert (w[:, 0] == tiny_tokenizer.bos_token_id).all()
    assert seen == [(3 * t, 3 * 15) for t in range(1, 16)]  # every generated token counted, batched
    assert torch.equal(w, calibration_windows(tiny_tokenizer, "self", 3, 16, seed=0, model=model))
    assert not torch.equal(w, calibration_windows(tiny_tokenizer, "self", 3, 16, seed=1, model=model))


def test_self_generated_text_never_ends_early(tiny_tokenizer):
    """Every window is text: end-of-sequence is never sampled, even when the model wants nothing else."""
    from conftest import tiny_model

    from sparsekit.data import self_generated

    model = tiny_model("llama")
    eos = tiny_tokenizer.eos_token_id

    def eos_first(module, args, logits):
        logits = logits.clone()
        logits[..., eos] = 1e4
        return logits

    model.lm_head.register_forward_hook(eos_first)
    w = self_generated(model, tiny_tokenizer, 4, 12, seed=0, batch_size=3)
    assert w.shape == (4, 12) and not (w[:, 1:] == eos).any()


# ---------------------------------------------------------------------------- BOS
class WordTokenizer:
    """A stand-in tokenizer: one id per distinct whitespace word, BOS first; it records every
    text it tokenizes."""

    bos_token_id = 1
    vocab: dict[str, int] = {}  # shared: the same word has the same id in every instance

    def __init__(self, bos=True):
        self.texts = []
        if not bos:
            self.bos_token_id = None

    def ids(self, text: str) -> list[int]:
        words = [self.vocab.setdefault(w, 3 + len(self.vocab)) for w in text.split()]
        return ([self.bos_token_id] if self.bos_token_id is not None else []) + words

    def __call__(self, text, return_tensors=None):
        from types import SimpleNamespace

        self.texts.append(text)
        return SimpleNamespace(input_ids=torch.tensor([self.ids(text)]))


@pytest.mark.parametrize("model_type, expected", [("gemma3_text", True), ("gemma3", True), ("gemma2", True),
                                                  ("gemma", True), ("llama", False), ("qwen3", False),
                                                  ("recurrent_gemma", False)])
def test_resolve_bos_auto_by_family(model_type, expected):
    from sparsekit.data import resolve_bos

    assert resolve_bos("auto", model_type, WordTokenizer()) is expected
    assert resolve_bos("always", model_type, WordTokenizer()) is True
    assert resolve_bos("never", model_type, WordTokenizer()) is False
    assert resolve_bos("auto", model_type, WordTokenizer(bos=False)) is False


def test_resolve_bos_errors():
    from sparsekit.data import resolve_bos

    with pytest.raises(UsageError, match="--bos always: this tokenizer has no BOS token: pass --bos never"):
        resolve_bos("always", "llama", WordTokenizer(bos=False))
    with pytest.raises(UsageError, match="unknown --bos 'yes': use one of auto, always, never"):
        resolve_bos("yes", "llama", WordTokenizer())


def test_with_bos_replaces_the_first_token_only():
    from sparsekit.data import with_bos

    w = torch.arange(12).view(3, 4)
    got = with_bos(w, 99)
    assert torch.equal(got, torch.tensor([[99, 1, 2, 3], [99, 5, 6, 7], [99, 9, 10, 11]]))
    assert w[0, 0].item() == 0  # the input is not modified
    with pytest.raises(ValueError):
        with_bos(w, None)


def test_eval_windows_with_bos_keep_count_and_scored_tokens(tiny_tokenizer):
    """Evaluation windows as `sparsekit eval` cuts them: the text's token stream in windows; with
    BOS, each window's first (unscored) token replaced by it."""
    from sparsekit.data import eval_tokens, with_bos

    path = str(data_file("test"))
    bos = tiny_tokenizer.bos_token_id
    plain = windows(eval_tokens(tiny_tokenizer, path, 32), 32, max_windows=5)
    with_ = with_bos(plain, bos)
    assert plain.shape == with_.shape == (5, 32)
    assert plain[0, 0] == bos and (plain[1:, 0] != bos).all()  # one BOS in the stream, at its start
    assert (with_[:, 0] == bos).all() and torch.equal(with_[:, 1:], plain[:, 1:])
    assert (with_[:, 1:] != bos).all()  # never a second BOS


def test_stream_has_one_leading_bos_even_if_the_text_starts_with_one(tiny_tokenizer):
    raw = tiny_tokenizer("<s>The bridge", return_tensors="pt").input_ids[0]
    assert raw[:2].tolist() == [1, 1]  # the tokenizer adds its own BOS before the literal one
    ids = tokenize_rows(tiny_tokenizer, ["<s>The bridge"])
    assert ids[0] == 1 and ids[1] != 1 and torch.equal(ids, raw[1:])


# ----------------------------------------------------------------- sampling protocols
def test_stream_windows_follow_the_reference_draws():
    import random

    from sparsekit.data import stream_windows

    ids = torch.arange(1000)
    got = stream_windows(ids, 7, 50, seed=3)
    random.seed(3)  # the reference: Python's global random, seeded, one randint per window
    starts = [random.randint(0, 1000 - 50 - 1) for _ in range(7)]
    assert torch.equal(got, torch.stack([ids[s:s + 50] for s in starts]))
    assert torch.equal(stream_windows(torch.arange(51), 3, 50), torch.arange(50).expand(3, 50))
    with pytest.raises(UsageError, match="not more than --seqlen 50"):
        stream_windows(torch.arange(50), 1, 50)


def _documents():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 60, (200,), generator=g).tolist()
    return [" ".join(f"d{d}w{k}" for k in range(n)) for d, n in enumerate(lengths)]


def test_document_windows_come_from_single_long_documents():
    import random

    from sparsekit.data import document_windows

    docs = _documents()
    tok = WordTokenizer()

    def tokenize(text):
        return tok(text).input_ids[0]

    seqlen = 40
    docs[::4] = [" ".join(f"e{d}w{k}" for k in range(seqlen - 1)) for d in range(50)]  # exactly seqlen tokens
    got = document_windows(docs, tokenize, 16, seqlen, seed=0)
    assert got.shape == (16, seqlen)
    every = [torch.tensor(WordTokenizer().ids(d)) for d in docs]
    long_enough = {i for i, ids in enumerate(every) if ids.numel() > seqlen}
    assert 0 < len(long_enough) < len(docs) and sum(ids.numel() == seqlen for ids in every) >= 50
    for row in got:
        # every window lies inside one document, and that document has more than seqlen tokens
        homes = [i for i, ids in enumerate(every)
                 if ids.numel() >= seqlen and (ids.unfold(0, seqlen, 1) == row).all(1).any()]
        assert len(homes) == 1 and homes[0] in long_enough
    # only drawn documents are tokenized: far fewer than all of them
    assert len(tok.texts) < len(docs) // 2
    # the reference's draws, with Python's global random
    random.seed(0)
    ref = []
    while len(ref) < 16:
        i = random.randint(0, len(docs) - 1)
        ids = tokenize(docs[i])
        if ids.numel() <= seqlen:
            continue
        s = random.randint(0, ids.numel() - seqlen - 1)
        ref.append(ids[s:s + seqlen])
    assert torch.equal(got, torch.stack(ref))
    assert torch.equal(got, document_windows(docs, tokenize, 16, seqlen, seed=0))
    assert not torch.equal(got, document_windows(docs, tokenize, 16, seqlen, seed=1))


def test_document_windows_without_long_documents():
    from sparsekit.data import document_windows

    tok = WordTokenizer()
    with pytest.raises(UsageError, match="no calibration document has more than --seqlen 100"):
        document_windows(_documents(), lambda t: tok(t).input_ids[0], 2, 100)


@pytest.fixture
def fake_named(monkeypatch):
    """Named datasets served from local lists (the function that returns documents is mocked)."""
    import sparsekit.data as data

    docs = {("c4", "calibration"): _documents(), ("c4", "test"): _documents()[::-1],
            ("wikitext2", "test"): ["a b", "", " = T = ", "c"], ("wikitext2", "calibration"): ["x y", "z"],
            ("ptb", "test"): ["s one", "s two"], ("ptb", "calibration"): ["t one", "t two"]}
    monkeypatch.setattr(data, "named_documents", lambda name, split: docs[(name, split)])
    return docs


def test_named_joins(fake_named):
    from sparsekit.data import calibration_windows, eval_tokens

    expected = {("wikitext2", "test"): "a b\n\n\n\n = T = \n\nc", ("wikitext2", "calibration"): "x y z",
                ("ptb", "test"): "s one s two", ("ptb", "calibration"): "t one t two"}
    for (name, split), text in expected.items():
        tok = WordTokenizer()
        if split == "test":
            eval_tokens(tok, name)
        else:
            calibration_windows(tok, name, 2, 2, sampling="first")
        assert tok.texts == [text], (name, split)


def test_c4_protocols(fake_named):
    from sparsekit.data import calibration_windows, eval_tokens

    tok = WordTokenizer()
    ids = eval_tokens(tok, "c4", seqlen=4)
    assert tok.texts == [" ".join(fake_named[("c4", "test")])]
    assert ids.numel() == 256 * 4 and torch.equal(ids, torch.tensor(tok.ids(tok.texts[0])[:1024]))
    assert windows(eval_tokens(tok, "c4", 4), 4).shape == (256, 4)
    assert eval_tokens(tok, "c4").numel() > 1024  # without a seqlen nothing is cut
    tok = WordTokenizer()
    w = calibration_windows(tok, "c4", 8, 40, seed=0, bos=True)
    assert w.shape == (8, 40) and (w[:, 0] == 1).all()
    documents = set(fake_named[("c4", "calibration")])
    assert tok.texts and all(t in documents for t in tok.texts)  # whole single documents only
    with pytest.raises(UsageError, match="--data c4 draws each window from a random document"):
        calibration_windows(tok, "c4", 8, 40, sampling="first")


def never(what):
    """A stand-in that fails the test if it is called."""
    def fail(*a, **k):
        raise AssertionError(f"{what}")
    return fail


def cut_off_network(monkeypatch):
    """Any attempt to reach the hub, by the probe, `datasets` or a plain socket, fails the test."""
    import socket

    import datasets

    import sparsekit.data as data

    monkeypatch.setattr(data, "hub_reachable", never("the hub was probed"))
    monkeypatch.setattr(datasets, "load_dataset", never("datasets.load_dataset was called"))
    monkeypatch.setattr(socket, "create_connection", never("a network connection was attempted"))
    monkeypatch.setattr(socket.socket, "connect", never("a network connection was attempted"))


def test_check_data_request_is_instant_for_local_sources(tmp_path, monkeypatch):
    """Local sources are checked without parsing their rows (`_file_rows` is never called) and
    without asking the network (no offline variable set, nothing remembered from a probe)."""
    import sparsekit.data as data
    from sparsekit.data import check_data_request

    (tmp_path / "a.txt").write_text("x\n")
    (tmp_path / "x.csv").write_text("a\n")
    (tmp_path / "empty").mkdir()
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(data, "_PROBE", {})
    monkeypatch.setattr(data, "_file_rows", never("a data file was read"))
    cut_off_network(monkeypatch)
    check_data_request(str(tmp_path / "a.txt"), "test")
    check_data_request(str(tmp_path), "calibration", "first")
    check_data_request("self", "calibration", "random")
    cases = [((str(tmp_path / "missing.txt"), "test"), "no such file or folder"),
             ((str(tmp_path / "x.csv"), "test"), "unsupported data file type '.csv'"),
             ((str(tmp_path / "empty"), "test"), "folder has no"),
             ((str(tmp_path / "a.txt"), "calibration", "middle"), "unknown --sampling 'middle': use random or first"),
             (("c4", "calibration", "first"), "--data c4 draws each window from a random document"),
             (("self", "test"), "only makes calibration data"),
             (("self", "calibration", "first"), "--data self generates its text")]
    for args, message in cases:
        with pytest.raises(UsageError, match=message):
            check_data_request(*args)


def test_named_datasets_fail_fast_offline(monkeypatch, tmp_path):
    """Offline (HF_DATASETS_OFFLINE) and not cached: refused at once, without a probe, a connection
    attempt or a call into `datasets`."""
    import sparsekit.data as data

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cut_off_network(monkeypatch)
    for name in data.NAMED:
        with pytest.raises(UsageError, match=f"--data {name}: the Hugging Face hub is not reachable and {name} "
                                             "is not in the local datasets cache"):
            data.check_data_request(name, "test")
        with pytest.raises(UsageError, match="hub is not reachable"):
            data.eval_tokens(WordTokenizer(), name)
    with pytest.raises(UsageError, match="hub is not reachable"):
        data.calibration_windows(WordTokenizer(), "c4", 2, 8)
    # with a cached copy, offline validation passes (loading then reads the cache only)
    (tmp_path / "allenai___c4" / "default" / "0.0.0" / "abc").mkdir(parents=True)
    assert data.is_cached("c4") and not data.is_cached("wikitext2")
    data.check_data_request("c4", "test")


def test_named_dataset_with_the_real_network_probe(monkeypatch, tmp_path):
    """No offline variable: the real probe decides, with one connection attempt (3 s timeout) whose
    answer is remembered. The network is a stand-in that refuses, then accepts, the connection."""
    import socket

    import sparsekit.data as data

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    class Connection:
        def close(self):
            pass

    for reachable in (False, True):
        attempts = []

        def create_connection(address, timeout=None, *a, **k):
            attempts.append(timeout)
            if not reachable:
                raise OSError("network is unreachable")
            return Connection()

        monkeypatch.setattr(data, "_PROBE", {})
        monkeypatch.setattr(socket, "create_connection", create_connection)
        try:
            data.check_data_request("wikitext2", "test")
            passed = True
        except UsageError as exc:
            assert "hub is not reachable" in str(exc)
            passed = False
        assert passed == reachable == (not data._offline())
        assert attempts == [3.0]  # one probe, remembered for the next question


def test_unreachable_hub_never_calls_datasets(monkeypatch, tmp_path):
    import datasets

    import sparsekit.data as data

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(data, "_PROBE", {})
    monkeypatch.setattr(data, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset was called"))
    with pytest.raises(UsageError, match="--data ptb: the Hugging Face hub is not reachable"):
        data.load_rows("ptb", "calibration")


def test_shipped_text_fixture_is_what_its_generator_writes():
    import importlib.util

    from pathlib import Path

    folder = Path(__file__).resolve().parent / "data"
    spec = importlib.util.spec_from_file_location("generate_fixture", folder / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    for name, (seed, articles) in generate.SPLITS.items():
        text = (folder / f"{name}.txt").read_text(encoding="utf-8")
        assert text == generate.generate(seed, articles), name
        assert 50_000 < len(text) < 200_000


def test_dataset_column_reads_rows_lazily():
    import datasets

    from sparsekit.data import _Column, document_windows

    docs = _documents()
    col = _Column(datasets.Dataset.from_dict({"text": docs, "other": list(range(len(docs)))}), "text")
    assert len(col) == len(docs) and col[3] == docs[3] and col[1:3] == docs[1:3] and list(col) == docs
    tok = WordTokenizer()
    tokenize = lambda t: tok(t).input_ids[0]  # noqa: E731
    assert torch.equal(document_windows(col, tokenize, 4, 20, seed=5), document_windows(docs, tokenize, 4, 20, seed=5))


def test_sampling_model_is_a_bf16_copy_only_where_faster(monkeypatch):
    """Self-generation samples with a bfloat16 copy where the CPU is faster in bf16; the model
    itself (the one being pruned) is never changed."""
    from conftest import tiny_model

    import sparsekit.data as data

    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(data, "_faster_in_bfloat16", lambda: True)
    copy = data.sampling_model(model)
    assert copy is not model and next(copy.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    monkeypatch.setattr(data, "_available_memory", lambda: 1000)  # no room for a copy
    assert data.sampling_model(model) is model
    monkeypatch.setattr(data, "_available_memory", lambda: 1 << 40)
    monkeypatch.setattr(data, "_faster_in_bfloat16", lambda: False)
    assert data.sampling_model(model) is model
    assert data.sampling_model(model.to(torch.bfloat16)) is model  # already 16-bit: sampled as it is
