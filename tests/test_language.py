"""Synthetic language and tokenizer: determinism, coverage, round trips."""

import hashlib
import random
from collections import Counter

import pytest

from circuitry.errors import CircuitryError
from circuitry.tasks import ioi
from circuitry.tasks.words import LEXICON
from circuitry.zoo.language import SyntheticLanguage
from circuitry.zoo.tokenizer import BOS, UNK, build_vocab


def test_generator_is_deterministic_per_seed():
    lang = SyntheticLanguage()
    assert lang.sentences(7, 200) == lang.sentences(7, 200)
    assert lang.sentences(7, 200) != lang.sentences(8, 200)


def test_every_family_appears_at_its_rate():
    lang = SyntheticLanguage()
    rng = random.Random(0)
    names, weights = zip(*lang.weights)
    counts = dict.fromkeys(names, 0)
    for _ in range(20000):
        counts[rng.choices(names, weights=weights)[0]] += 1
    total = sum(weights)
    for name, w in lang.weights:
        assert abs(counts[name] / 20000 - w / total) < 0.015, name


def test_ioi_subject_rate():
    def subject_share(rate: float, n: int = 4000) -> float:
        rng, hits = random.Random(0), 0
        for _ in range(n):
            words = ioi.sample_sentence(rng, LEXICON, subject_rate=rate).rstrip(".").split()
            named = [w.strip(",") for w in words[:-1] if w.strip(",") in LEXICON.names]
            assert len(set(named)) == 2 and words[-1] in named  # IO once, subject twice, then the answer
            hits += named.count(words[-1]) == 2
        return hits / n

    assert subject_share(0.0) == 0.0 and abs(subject_share(0.2) - 0.2) < 0.02
    # rate 0 is the shipped language the zoo was trained on: hash of its sentences taken before the option existed
    shipped = "\n".join(SyntheticLanguage(ioi_subject_rate=0.0).sentences(0, 5000))
    assert hashlib.sha256(shipped.encode()).hexdigest()[:16] == "d5081124f819c0eb"
    assert SyntheticLanguage(ioi_subject_rate=0.2).sentences(3, 300) != SyntheticLanguage().sentences(3, 300)
    with pytest.raises(CircuitryError, match="subject rate"):
        SyntheticLanguage(ioi_subject_rate=0.5)


def test_ioi_share():
    """IOI sentences come at ioi_share; the other families keep their shipped proportions; the shipped share
    draws exactly the shipped sentences (hash above)."""
    lang = SyntheticLanguage(ioi_share=0.04)
    weights = dict(lang.family_weights())
    assert sum(weights.values()) == pytest.approx(1.0) and weights["ioi"] == 0.04
    shipped = dict(SyntheticLanguage().weights)
    for name in shipped:
        if name != "ioi":
            assert weights[name] / weights["filler"] == pytest.approx(shipped[name] / shipped["filler"])
    rng = random.Random(0)
    names, w = zip(*lang.family_weights())
    assert abs(Counter(rng.choices(names, weights=w, k=20000))["ioi"] / 20000 - 0.04) < 0.005
    assert SyntheticLanguage(ioi_share=0.26).sentences(0, 500) == SyntheticLanguage().sentences(0, 500)
    assert lang.options() == {"ioi_share": 0.04} and SyntheticLanguage().options() == {}
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(CircuitryError, match="IOI share"):
            SyntheticLanguage(ioi_share=bad)


def test_vocab_is_deterministic_and_covers_the_lexicon():
    lang = SyntheticLanguage()
    v1, v2 = build_vocab(lang, 500), build_vocab(lang, 500)
    assert v1 == v2
    assert v1[0] == BOS and len(set(v1)) == len(v1)
    for word in (*lang.lexicon.names, *lang.lexicon.places, "17", "32", "00", "99"):
        assert word in v1


def test_tokenizer_round_trip_without_unknowns(small_tokenizer):
    tok = small_tokenizer
    for text in SyntheticLanguage().sentences("roundtrip", 300):
        ids = tok.encode(text)
        assert ids[0] == tok.bos_token_id
        assert tok.unk_token_id not in ids, text
        assert tok.encode(tok.decode(ids, skip_special_tokens=True)) == ids
    assert tok.convert_ids_to_tokens(tok.encode("from the year 1732", add_special_tokens=False)) == [
        "from", "the", "year", "17", "32"
    ]
    assert tok.unk_token == UNK


def test_hooked_transformer_uses_the_tokenizer(dense):
    toks = dense.to_tokens("When Mary and John went to the store, John gave a drink to")
    assert toks[0, 0].item() == dense.tokenizer.bos_token_id
    assert dense.to_str_tokens("Mary went home")[1:] == ["Mary", "went", "home"]
    assert dense.to_tokens("Mary went", prepend_bos=False).shape == (1, 2)
