"""Task batches: shapes, equal lengths, answers, metrics, corruptions, custom files, other tokenizers."""

import json

import pytest
import torch

from circuitry.errors import CircuitryError
from circuitry.tasks import TASKS, CustomTask, get_task
from circuitry.tasks.base import answer_metric


@pytest.mark.parametrize("name", list(TASKS))
def test_batches_have_equal_lengths_and_single_token_answers(dense, name):
    task = get_task(name, dense)
    batches = list(task.batches(n=50, seed=3, batch_size=20))
    assert [len(b) for b in batches] == [20, 20, 10]
    pad = dense.tokenizer.pad_token_id
    for b in batches:
        assert b.clean.shape == b.corrupt.shape and b.clean.ndim == 2
        lengths = (b.clean != pad).sum(1)
        assert torch.equal(lengths, (b.corrupt != pad).sum(1))
        assert torch.equal(b.answer_pos, lengths - 1)
        assert (b.clean[:, 0] == dense.tokenizer.bos_token_id).all()
        assert (b.clean != b.corrupt).any(1).all(), "every corruption changes the prompt"
        assert (b.correct[:, 0] >= 0).all() and (b.wrong[:, 0] >= 0).all()
        for row_c, row_w in zip(b.correct.tolist(), b.wrong.tolist()):
            assert not set(row_c) & set(row_w) - {-1}


def test_same_seed_same_prompts_other_seed_other_prompts(dense):
    task = get_task("ioi", dense)
    assert task.pairs(30, 5) == task.pairs(30, 5)
    assert task.pairs(30, 5) != task.pairs(30, 6)


def test_ioi_orders_and_corruptions(dense):
    abc = get_task("ioi", dense).pairs(200, 0)
    for p in abc[:50]:
        io, s = p.answers[0].strip(), p.wrongs[0].strip()
        assert p.clean.count(s) == 2 and p.clean.count(io) == 1
        assert io not in p.corrupt.split() and s not in p.corrupt.split()
    first = [p.clean.split(" and ")[0].split()[-1] == p.answers[0].strip() for p in abc]
    assert 0.35 < sum(first) / len(first) < 0.65, "ABBA and BABA both occur"
    for p in get_task("ioi", dense, "s2-io-flip").pairs(50, 0):
        io = p.answers[0].strip()
        assert p.corrupt.count(io) == 2


def test_greater_than_sets_partition_the_years(dense):
    task = get_task("greater-than", dense)
    b = next(task.batches(20, 0))
    for p, c, w in zip(b.pairs, b.correct.tolist(), b.wrong.tolist()):
        xx = int(p.clean.split()[-5][-2:])
        assert set(p.answers) == {f"{y:02d}" for y in range(xx + 1, 100)}
        assert len([i for i in c + w if i >= 0]) == 100
        assert "01" in p.corrupt


def test_metrics_against_hand_computation():
    logits = torch.tensor([[1.0, 3.0, 0.5, 2.0], [0.0, -1.0, 4.0, 1.0]])
    correct = torch.tensor([[1, -1], [0, -1]])
    wrong = torch.tensor([[0, 3], [2, -1]])
    assert torch.allclose(answer_metric(logits, correct, wrong, "logit_diff"), torch.tensor([3.0 - 2.0, 0.0 - 4.0]))
    p = logits.softmax(-1)
    expected = torch.stack([p[0, 1] - p[0, 0] - p[0, 3], p[1, 0] - p[1, 2]])
    assert torch.allclose(answer_metric(logits, correct, wrong, "prob_diff"), expected)


def test_unknown_corruption_and_nonpositive_n(dense):
    with pytest.raises(CircuitryError, match="no corruption"):
        get_task("ioi", dense, "nope")
    with pytest.raises(CircuitryError, match="positive"):
        get_task("ioi", dense).pairs(0, 0)
    with pytest.raises(CircuitryError, match="unknown task"):
        get_task("nope", dense)


def test_custom_json_and_jsonl(dense, tmp_path):
    recs = [
        {"clean": "When Mary and John went to the store, John gave a drink to", "corrupt": "When Anna and Paul went to the store, Lisa gave a drink to", "answer": " Mary", "wrong": " John"},
        {"clean": "The capital of France is", "corrupt": "The capital of Italy is", "answer": "Paris", "wrong": ["Rome", "Berlin"]},
    ]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in recs))
    task = get_task(str(jsonl), dense)
    b = task.tokenize(task.pairs(5, 0))
    assert len(b) == 2 and task.name == "t"
    js = tmp_path / "t.json"
    js.write_text(json.dumps({"metric": "prob_diff", "records": recs}))
    assert get_task(str(js), dense).metric_kind == "prob_diff"
    mine = CustomTask.from_records(recs, dense, name="mine", metric="prob_diff")  # the same records from Python
    again = mine.tokenize(mine.pairs(5, 0))
    assert mine.name == "mine" and mine.metric_kind == "prob_diff" and torch.equal(again.clean, b.clean) and torch.equal(again.wrong, b.wrong)
    assert CustomTask.from_records((r for r in recs), dense, name=None).name == "custom"  # any iterable; a default name
    for bad in ([], recs[0], 3):  # nothing, one dict alone, not records at all
        with pytest.raises(CircuitryError, match="records must be a non-empty list"):
            CustomTask.from_records(bad, dense)
    with pytest.raises(CircuitryError, match="task 'mine': unknown metric 'accuracy'"):
        CustomTask.from_records(recs, dense, name="mine", metric="accuracy")


@pytest.mark.parametrize(
    "record, message",
    [
        ({"clean": "The capital of France is", "corrupt": "The capital of is", "answer": "Paris", "wrong": "Rome"}, "bad.jsonl line 3: clean and corrupt differ in token length"),
        ({"clean": "The capital of France is", "corrupt": "The capital of Italy is", "answer": "Paris Rome", "wrong": "Rome"}, "bad.jsonl line 3: answer 'Paris Rome' is not a single token"),
        ({"clean": "The capital of France is", "corrupt": "The capital of Italy is", "wrong": "Rome"}, "bad.jsonl line 3: 'answer'"),
        ({"clean": ["The capital of France is", "The capital of Spain is"], "corrupt": "The capital of Italy is", "answer": ["Paris", "Madrid"],
          "wrong": "Rome"}, "bad.jsonl line 3: 'clean' must be one non-empty prompt string"),  # two prompts in one record: not silently the first
        ({"clean": "", "corrupt": "The capital of Italy is", "answer": "Paris", "wrong": "Rome"}, "bad.jsonl line 3: 'clean' must be one non-empty"),
        ({"clean": "The capital of France is", "corrupt": "The capital of Italy is", "answer": "Glorpzzle", "wrong": "Rome"},
         "bad.jsonl line 3: answer 'Glorpzzle' is outside the tokenizer's vocabulary"),
    ],
)
def test_bad_custom_records_are_named(dense, tmp_path, record, message):
    good = {"clean": "The capital of Spain is", "corrupt": "The capital of Italy is", "answer": "Madrid", "wrong": "Rome"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(record))  # a blank line: errors name file lines
    with pytest.raises(CircuitryError, match=message):
        get_task(str(path), dense)
    js = tmp_path / "bad.json"  # a .json list: records are named by 1-based position
    js.write_text(json.dumps([good, record]))
    with pytest.raises(CircuitryError, match=message.replace("bad.jsonl line 3", "bad.json record 2")):
        get_task(str(js), dense)
    with pytest.raises(CircuitryError, match=message.replace("bad.jsonl line 3", "record 2")):  # records given in Python
        CustomTask.from_records([good, record], dense)


def test_task_files_refuse_unknown_keys_and_warn_of_repeated_records(dense, tmp_path):
    good = {"clean": "The capital of Spain is", "corrupt": "The capital of Italy is", "answer": "Madrid", "wrong": "Rome"}
    other = {**good, "clean": "The capital of France is", "answer": "Paris"}
    typo = tmp_path / "typo.json"  # a misspelt metric would silently fall back to logit_diff
    typo.write_text(json.dumps({"metrc": "prob_diff", "records": [good]}))
    with pytest.raises(CircuitryError, match="typo.json: unknown key 'metrc'"):
        get_task(str(typo), dense)
    bare = tmp_path / "bare.json"  # one record, not a list of them
    bare.write_text(json.dumps(good))
    with pytest.raises(CircuitryError, match=r"bare.json is one record: a .json task is a list of records"):
        get_task(str(bare), dense)
    bare.write_text("{}")
    with pytest.raises(CircuitryError, match=r"holds no records: give \{clean, corrupt, answer, wrong\} objects"):
        get_task(str(bare), dense)
    with pytest.warns(UserWarning, match="2 of its 4 records repeat an earlier one"):
        task = CustomTask.from_records([good, good, other, good], dense)
    assert len(task.pairs(10, 0)) == 4
    with pytest.raises(CircuitryError, match="the prompt seed must be an integer, got 1.0"):
        task.pairs(2, 1.0)
    with pytest.raises(CircuitryError, match="the prompt seed must be an integer, got None"):
        get_task("ioi", dense).pairs(2, None)
    with pytest.raises(CircuitryError, match="batch size must be positive, got 0"):
        next(get_task("ioi", dense).batches(4, 0, batch_size=0))
    assert CustomTask.from_records([{**good, "answer": ("Madrid",)}], dense).pairs(1, 0)[0].answers == ("Madrid",)  # a tuple of answers


def test_broken_jsonl_line_is_named(dense, tmp_path):
    path = tmp_path / "t.jsonl"
    good = {"clean": "The capital of Spain is", "corrupt": "The capital of Italy is", "answer": "Madrid", "wrong": "Rome"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n" + '{"clean": "The capital"\n')
    with pytest.raises(CircuitryError, match=r"t.jsonl line 3 is not valid JSON: .* \(column \d+\)"):
        get_task(str(path), dense)


def test_tasks_filter_words_for_another_tokenizer():
    """A small BPE tokenizer splits many names: they are dropped and counted, pairs stay equal length."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from circuitry.zoo.language import SyntheticLanguage

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<bos>", "<pad>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(SyntheticLanguage().sentences("bpe", 3000), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")
    task = get_task("ioi", tok)
    assert 0 < task.filtered["names"] < 100
    b = task.tokenize(task.pairs(40, 0))
    pad = tok.pad_token_id
    assert torch.equal((b.clean != pad).sum(1), (b.corrupt != pad).sum(1))


def test_hand_built_batches_are_checked_in_one_line():
    """TaskBatch refuses what would otherwise fail deep inside a forward pass or index the wrong position."""
    from circuitry.tasks.base import TaskBatch

    clean = torch.zeros(3, 6, dtype=torch.long)
    pos, ids = torch.tensor([5, 4, 5]), torch.tensor([[1], [2], [3]])
    assert len(TaskBatch(clean, clean.clone(), pos, ids, ids)) == 3
    bad = {
        r"correct has shape \(3,\)": dict(correct=torch.tensor([1, 2, 3])),
        r"answer_pos has shape \(\)": dict(answer_pos=torch.tensor(5)),
        "must be tensors; answer_pos": dict(answer_pos=5),
        r"answer_pos must lie in \[0, 6\)": dict(answer_pos=torch.tensor([5, 6, 5])),
        r"wrong has shape \(2, 1\)": dict(wrong=ids[:2]),
    }
    for message, change in bad.items():
        args = {"clean": clean, "corrupt": clean, "answer_pos": pos, "correct": ids, "wrong": ids, **change}
        with pytest.raises(CircuitryError, match=message):
            TaskBatch(**args)
