"""A user's own training text: windows, held-out split, file formats, and its use by sparse post-training,
transcoder training and the measurements."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from circuitry.data import TextData, token_source
from circuitry.errors import CircuitryError
from circuitry.sparsity import SparsifyConfig, connectivity_report, sparsify
from circuitry.sparsity.train import CHECKPOINT
from circuitry.zoo.language import SyntheticLanguage
from circuitry.zoo.pretrain import heldout_ce
from tests.test_sparsify import CFG, interrupted_at_first_checkpoint, tiny


def docs(n: int = 40, seed: int = 7) -> list[str]:
    lang = SyntheticLanguage()
    return [" ".join(lang.sentences(f"{seed}|{i}", 6)) for i in range(n)]


def test_windows_are_bos_plus_consecutive_tokens_and_held_out_is_never_trained_on():
    data = TextData(torch.arange(10, 110), bos=1, heldout_fraction=0.1)  # training 10..99, held out 100..109
    a, b = data.batch("k", 16, 6), data.batch("k", 16, 6)
    assert torch.equal(a, b) and not torch.equal(a, data.batch("other", 16, 6))  # the key fixes the batch
    assert a.shape == (16, 6) and (a[:, 0] == 1).all()
    assert (a[:, 2:] - a[:, 1:-1] == 1).all() and int(a[:, 1:].max()) <= 99  # runs of the training part only
    held = data.heldout(100, 6)  # 10 held-out tokens: two chunks of 5, not 100
    assert held.tolist() == [[1, 100, 101, 102, 103, 104], [1, 105, 106, 107, 108, 109]]
    no_bos = TextData(torch.arange(10, 110), bos=None, heldout_fraction=0.1)
    assert no_bos.heldout(3, 5).tolist() == [list(range(100, 105)), list(range(105, 110))]
    with pytest.raises(CircuitryError, match="held-out part has 10 tokens, fewer than one sequence of 12"):
        data.heldout(4, 12)
    with pytest.raises(CircuitryError, match="90 training tokens, fewer than one sequence of 95"):
        data.batch("k", 1, 95)
    assert data.info()["fingerprint"] != TextData(torch.arange(11, 111), bos=1).info()["fingerprint"]


def test_windows_start_at_documents_and_long_documents_are_packed_in_chunks():
    B = 0
    docs = [[B, 1, 2, 3], [B, *range(10, 20)], [B, 30, 31], [B, *range(40, 52)]]  # 31 tokens; held out: the last 3
    data = TextData(torch.tensor([t for d in docs for t in d]), bos=B, heldout_fraction=3 / 31)
    # length 5 = BOS + 4 tokens from: doc 1's first token (1), doc 2's (5) and every 4 further (9, 13: runs on into
    # doc 3), doc 3's (16), doc 4's (19) and 23 (27 would need a held-out token)
    assert data.chunk_starts("train", 5) == [1, 5, 9, 13, 16, 19, 23]
    windows = {tuple(w) for w in data.batch("k", 64, 5).tolist()}
    assert windows == {(B, 1, 2, 3, B), (B, 10, 11, 12, 13), (B, 14, 15, 16, 17), (B, 18, 19, B, 30), (B, 30, 31, B, 40),
                       (B, 40, 41, 42, 43), (B, 44, 45, 46, 47)}  # fmt: skip
    assert data.heldout(5, 4).tolist() == [[B, 49, 50, 51]]  # the held-out part starts inside doc 4: one window
    later = TextData(torch.tensor([t for d in docs for t in d]), bos=B, heldout_fraction=16 / 31)  # held out: docs 3 and 4
    assert later.heldout(9, 5).tolist() == [[B, 30, 31, B, 40], [B, 40, 41, 42, 43], [B, 44, 45, 46, 47], [B, 48, 49, 50, 51]]
    with pytest.raises(CircuitryError, match="at least one token after BOS"):
        data.heldout(2, 1)


def test_text_jsonl_and_token_files_give_the_same_stream(small_tokenizer, tmp_path):
    model, texts = tiny(small_tokenizer), docs()
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
    direct = TextData.from_texts(texts, small_tokenizer)
    save_file({"tokens": torch.cat([direct.train, direct.held]).int()}, tmp_path / "d.safetensors")
    loaded = [TextData.load(tmp_path / f"d{s}", model) for s in (".jsonl", ".safetensors")]
    assert {d.fingerprint for d in loaded} == {direct.fingerprint}
    (tmp_path / "d.txt").write_text(texts[0])  # a text file is one document
    assert TextData.load(tmp_path / "d.txt", model).fingerprint == TextData.from_texts(texts[:1], small_tokenizer).fingerprint
    bos = small_tokenizer.bos_token_id
    assert direct.train[0] == bos and (direct.train == bos).sum() + (direct.held == bos).sum() == len(texts)  # one BOS per document
    first = small_tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert direct.train[1 : 1 + len(first)].tolist() == first


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("english.txt", "Photosynthesis converts sunlight into chemical energy.", "tokens are unknown to the model's tokenizer"),
        ("bad.jsonl", '{"text": "Mary went home."}\n{"text": ', "bad.jsonl, line 2: not valid JSON"),
        ("notext.jsonl", '{"body": "Mary went home."}', 'line 1: expected an object with a "text" string'),
        ("empty.txt", "\n\n  \n", "no text"),
        ("latin1.txt", b"Mary \xe9 home.", "not UTF-8 text"),
        ("data.csv", "Mary", "expected one of .txt, .jsonl, .safetensors"),
        ("missing.txt", None, "does not exist"),
        ("ids.safetensors", {"ids": torch.arange(5)}, "no 'tokens' tensor (has ids)"),
        ("float.safetensors", {"tokens": torch.rand(50)}, "token ids must be integers"),
        ("big.safetensors", {"tokens": torch.arange(10**6, 10**6 + 50)}, "token id 1000049 is out of the model's vocabulary"),
        ("junk.safetensors", b"not a safetensors file", "not a readable safetensors file"),
        ("one.safetensors", {"tokens": torch.arange(5, 6)}, "1 tokens do not split into training and held-out parts"),
        ("dir.jsonl", "DIR", "is a directory"),
    ],
)
def test_bad_data_files_are_refused_in_one_line(small_tokenizer, tmp_path, name, content, message):
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, dict):
        save_file(content, path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(CircuitryError, match=re.escape(message)) as err:
        token_source(tiny(small_tokenizer), path)
    assert "\n" not in str(err.value)


def test_python_misuse_of_text_data_is_refused(small_tokenizer):
    with pytest.raises(CircuitryError, match="not one string"):
        TextData.from_texts("Mary went to the store.", small_tokenizer)
    with pytest.raises(CircuitryError, match="do not split into training and held-out parts"):
        TextData(torch.arange(10, 20), bos=1, heldout_fraction=0.99)


def test_data_too_short_for_the_held_out_part_fails_before_training(small_tokenizer, tmp_path):
    from circuitry.transcoders import CLTTrainConfig, train_and_save

    short = TextData.from_texts(docs(4), small_tokenizer)  # enough to train on, its 5% too short for one sequence
    assert len(short.train) > 24 and len(short.held) < 24
    with pytest.raises(CircuitryError, match="held-out part has"):
        sparsify(tiny(small_tokenizer), tmp_path / "s", SparsifyConfig(**CFG), progress=False, data=short)
    with pytest.raises(CircuitryError, match="held-out part has"):
        train_and_save(tiny(small_tokenizer), tmp_path / "c", CLTTrainConfig(steps=2), progress=False, data=short)
    assert not any(tmp_path.iterdir())


def test_resume_knows_the_data_by_its_tokens_not_its_path(small_tokenizer, tmp_path):
    from circuitry.data import check_same_data

    texts = docs(60)
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text("\n".join(json.dumps({"text": t}) for t in texts))
    a, b = (TextData.load(tmp_path / n, tiny(small_tokenizer)) for n in ("a.jsonl", "b.jsonl"))
    assert a.info()["source"] != b.info()["source"] and Path(a.info()["source"]).is_absolute()
    check_same_data(a.info(), b, "checkpoint")  # the same tokens elsewhere: accepted
    with pytest.raises(CircuitryError, match="other training data"):
        check_same_data(a.info(), TextData.from_texts(texts[1:], small_tokenizer), "checkpoint")


def test_sparsify_trains_and_measures_on_given_text_and_resumes_only_on_it(small_tokenizer, tmp_path, monkeypatch):
    own, other = TextData.from_texts(docs(60), small_tokenizer), TextData.from_texts(docs(60, seed=8), small_tokenizer)
    cfg = SparsifyConfig(**CFG)
    with interrupted_at_first_checkpoint(monkeypatch):
        sparsify(tiny(small_tokenizer), tmp_path / "s", cfg, progress=False, data=own)
    with pytest.raises(CircuitryError, match="made on other training data"):
        sparsify(tiny(small_tokenizer), tmp_path / "s", cfg, resume=True, progress=False, data=other)
    with pytest.raises(CircuitryError, match="made on other training data"):  # nor on the synthetic language
        sparsify(tiny(small_tokenizer), tmp_path / "s", cfg, resume=True, progress=False)
    model, meta = sparsify(tiny(small_tokenizer), tmp_path / "s", cfg, resume=True, progress=False, data=own)
    assert not (tmp_path / "s" / CHECKPOINT).exists()
    assert meta["data"] == own.info() and meta["command"].split("  # ")[0].endswith("--data <Python data>")
    assert meta["dense_heldout_ce"] == round(heldout_ce(tiny(small_tokenizer), own, cfg.heldout_sequences), 5)
    assert meta["dense_heldout_ce"] != round(heldout_ce(tiny(small_tokenizer), token_source(model), cfg.heldout_sequences), 5)
    report = connectivity_report(model, n=cfg.heldout_sequences, data=own)
    assert report.ce == meta["heldout_ce"] and report.connectivity == pytest.approx(meta["connectivity"], abs=1e-6)


def test_transcoder_trains_and_is_measured_on_given_text(small_tokenizer, tmp_path):
    from circuitry.transcoders import CLTTrainConfig, train_and_save
    from circuitry.transcoders.io import RECORD

    model, own = tiny(small_tokenizer), TextData.from_texts(docs(60), small_tokenizer)
    cfg = CLTTrainConfig(d_transcoder=16, steps=3, batch_size=4, warmup=1, log_every=1)
    _, quality = train_and_save(model, tmp_path / "clt", cfg, progress=False, data=own)
    record = json.loads((tmp_path / "clt" / RECORD).read_text())
    assert record["data"] == own.info()
    assert quality.n_tokens == len(own.heldout(256, model.cfg.n_ctx)) * (model.cfg.n_ctx - 1)  # BOS excluded
    assert quality.n_sequences == len(own.heldout(256, model.cfg.n_ctx)) < 256  # what a short held-out part gives
    assert quality.ce_original == pytest.approx(heldout_ce(model, own, 256), abs=1e-5)
