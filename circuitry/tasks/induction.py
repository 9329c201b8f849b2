"""Induction: a random span of words, then the span again; predict the next repeated word.

Clean "r1 .. rk r1 .. r(k-1)" -> rk. Corruption ``swap``: the first copy ends in another word w
instead of rk, so induction now predicts w. Metric: logit(rk) - logit(w).
"""

from __future__ import annotations

import random

from circuitry.errors import CircuitryError
from circuitry.tasks.base import PromptPair, Task
from circuitry.tasks.words import LEXICON, Lexicon

MIN_SPAN, MAX_SPAN = 4, 8


def word_pool(lex: Lexicon = LEXICON) -> tuple[str, ...]:
    return lex.names + lex.places + lex.objects + lex.code_words + lex.doc_words


def sample_sentence(rng: random.Random, lex: Lexicon = LEXICON) -> str:
    span = rng.sample(word_pool(lex), rng.randint(MIN_SPAN, MAX_SPAN + 4))
    return " ".join(span + span) + "."


class InductionTask(Task):
    name = "induction"
    corruptions = ("swap",)
    description = "repeated random span; metric logit(next repeated word) - logit(swapped word)"

    def setup(self) -> None:
        self.pool, self.filtered["words"] = self.view.keep_single(word_pool())
        if len(self.pool) < MAX_SPAN + 2:
            raise CircuitryError("induction: too few single-token words for this tokenizer")

    def sample_pair(self, rng: random.Random) -> PromptPair:
        words = rng.sample(self.pool, rng.randint(MIN_SPAN, MAX_SPAN) + 1)
        span, other = words[:-1], words[-1]
        clean = " ".join(span + span[:-1])
        corrupt = " ".join(span[:-1] + [other] + span[:-1])
        return PromptPair(clean, corrupt, (" " + span[-1],), (" " + other,))
