"""The synthetic language the zoo models are trained on.

A document is a run of sentences drawn from families: the task families (IOI, greater-than,
induction, subject-verb agreement, docstrings) built from the same templates as the tasks, plus
simple facts and filler narrative so the model is a language model of this language, not a
single-task net. Everything is a pure function of a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Callable

from circuitry.errors import CircuitryError
from circuitry.tasks import docstring, greater_than, induction, ioi, sva
from circuitry.tasks.words import LEXICON, Lexicon

FILLER_TEMPLATES: tuple[str, ...] = (
    "[A] walked to the [PLACE].",
    "[A] bought a [OBJECT] at the [PLACE].",
    "The [OBJECT] was [ADJ].",
    "[A] saw [B] at the [PLACE].",
    "[A] and [B] talked about the [OBJECT].",
    "[A] was [ADJ] that day.",
    "In the [PLACE], [A] found a [ADJ] [OBJECT].",
    "It was a [ADJ] day at the [PLACE].",
    "[A] wanted a [ADJ] [OBJECT].",
    "[A] left the [OBJECT] in the [PLACE].",
    "The [PLACE] was [ADJ] and [ADJ].",
    "[A] asked [B] about the [PLACE].",
)


def filler_sentence(rng: random.Random, lex: Lexicon = LEXICON) -> str:
    a, b = rng.sample(lex.names, 2)
    text = rng.choice(FILLER_TEMPLATES).replace("[A]", a).replace("[B]", b)
    while "[ADJ]" in text:
        text = text.replace("[ADJ]", rng.choice(lex.adjectives), 1)
    return text.replace("[PLACE]", rng.choice(lex.places)).replace("[OBJECT]", rng.choice(lex.objects))


def fact_sentence(rng: random.Random, lex: Lexicon = LEXICON) -> str:
    country, capital = rng.choice(lex.facts)
    return rng.choice(("The capital of {c} is {k}.", "{k} is the capital of {c}.")).format(c=country, k=capital)


SHIPPED_IOI_SHARE = 0.26
LANGUAGE_OPTIONS = ("ioi_subject_rate", "ioi_share")  # SyntheticLanguage fields that zoo build can change


@dataclass(frozen=True)
class SyntheticLanguage:
    """Sentence-family mixture. ``weights`` are relative frequencies of the families."""

    weights: tuple[tuple[str, float], ...] = (
        ("ioi", SHIPPED_IOI_SHARE),
        ("greater_than", 0.14),
        ("induction", 0.10),
        ("sva", 0.16),
        ("docstring", 0.06),
        ("facts", 0.06),
        ("filler", 0.22),
    )
    lexicon: Lexicon = LEXICON
    ioi_subject_rate: float = 0.0  # share of IOI sentences that end with the subject (0: the shipped language)
    ioi_share: float = SHIPPED_IOI_SHARE  # share of all sentences that are IOI; the others keep their proportions

    def __post_init__(self) -> None:
        if not 0 <= self.ioi_subject_rate < 0.5:
            raise CircuitryError(f"IOI subject rate must be in [0, 0.5), got {self.ioi_subject_rate}")
        if not 0 < self.ioi_share < 1:
            raise CircuitryError(f"IOI share must be in (0, 1), got {self.ioi_share}")

    def family_weights(self) -> tuple[tuple[str, float], ...]:
        """``weights`` with IOI at ``ioi_share`` and the other families scaled to fill the rest (unchanged, to
        the bit, for the shipped share, so the shipped language draws the same sentences)."""
        if self.ioi_share == SHIPPED_IOI_SHARE:
            return self.weights
        rest = sum(w for f, w in self.weights if f != "ioi")
        return tuple((f, self.ioi_share if f == "ioi" else w * (1 - self.ioi_share) / rest) for f, w in self.weights)

    def options(self) -> dict[str, float]:
        """The language options that differ from the shipped language (recorded in meta.json; {} when shipped)."""
        return {k: getattr(self, k) for k in LANGUAGE_OPTIONS if getattr(self, k) != getattr(SyntheticLanguage, k)}

    def families(self) -> dict[str, Callable[[random.Random, Lexicon], str]]:
        return {
            "ioi": partial(ioi.sample_sentence, subject_rate=self.ioi_subject_rate),
            "greater_than": greater_than.sample_sentence,
            "induction": induction.sample_sentence,
            "sva": sva.sample_sentence,
            "docstring": docstring.sample_sentence,
            "facts": fact_sentence,
            "filler": filler_sentence,
        }

    @cached_property
    def _draw_table(self) -> tuple[tuple[str, ...], tuple[float, ...], dict[str, Callable[[random.Random, Lexicon], str]]]:
        """(family names, their weights, their samplers), built once per language: :meth:`sentence` is called for
        every sentence of every training batch."""
        names, weights = zip(*self.family_weights())
        return names, weights, self.families()

    def sentence(self, rng: random.Random) -> str:
        names, weights, families = self._draw_table
        family = rng.choices(names, weights=weights)[0]
        return families[family](rng, self.lexicon)

    @classmethod
    def of(cls, model) -> "SyntheticLanguage":
        """The language ``model`` was trained on, as recorded in its model directory (default: the shipped one)."""
        info = getattr(model, "circuitry_info", {})
        return cls(**{k: info[k] for k in LANGUAGE_OPTIONS if k in info})

    def sentences(self, seed: int | str, n: int) -> list[str]:
        rng = random.Random(f"sentences|{seed}")
        return [self.sentence(rng) for _ in range(n)]
