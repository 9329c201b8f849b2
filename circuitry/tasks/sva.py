"""Subject-verb agreement: "The dog near the cats" -> " runs" vs " run".

The subject's number decides the verb form; an attractor noun of random number may stand between.
Corruption ``number-flip``: the subject takes the other number, so the other verb form is right.
"""

from __future__ import annotations

import random

from circuitry.errors import CircuitryError
from circuitry.tasks.base import PromptPair, Task
from circuitry.tasks.words import LEXICON, Lexicon


def subject_phrase(rng: random.Random, subj: str, nouns, preps) -> str:
    """"The dog" or "The dog near the cats" (attractor of random number)."""
    if rng.random() < 0.25:
        return f"The {subj}"
    return f"The {subj} {rng.choice(preps)} the {rng.choice(rng.choice(nouns))}"


def sample_sentence(rng: random.Random, lex: Lexicon = LEXICON) -> str:
    plural = rng.random() < 0.5
    subj = rng.choice(lex.sva_nouns)[plural]
    sg, pl, conts = rng.choice(lex.sva_verbs)
    cont = rng.choice(conts).replace("{object}", rng.choice(lex.objects)).replace("{place}", rng.choice(lex.places))
    return f"{subject_phrase(rng, subj, lex.sva_nouns, lex.sva_preps)} {pl if plural else sg} {cont}."


class SVATask(Task):
    name = "sva"
    corruptions = ("number-flip",)
    description = "subject-verb agreement; metric logit(agreeing verb) - logit(other form)"

    def setup(self) -> None:
        one = self.view.single_token
        self.nouns = [n for n in LEXICON.sva_nouns if one(" " + n[0]) is not None and one(" " + n[1]) is not None]
        self.verbs = [v for v in LEXICON.sva_verbs if one(" " + v[0]) is not None and one(" " + v[1]) is not None]
        self.filtered["nouns"] = len(LEXICON.sva_nouns) - len(self.nouns)
        self.filtered["verbs"] = len(LEXICON.sva_verbs) - len(self.verbs)
        if not self.nouns or not self.verbs:
            raise CircuitryError("sva: no single-token nouns/verbs for this tokenizer")

    def sample_pair(self, rng: random.Random) -> PromptPair:
        plural = rng.random() < 0.5
        noun = rng.choice(self.nouns)
        sg, pl, _ = rng.choice(self.verbs)
        state = rng.getstate()
        clean = subject_phrase(rng, noun[plural], self.nouns, LEXICON.sva_preps)
        rng.setstate(state)  # same attractor for the corrupt prompt
        corrupt = subject_phrase(rng, noun[not plural], self.nouns, LEXICON.sva_preps)
        right, other = (pl, sg) if plural else (sg, pl)
        return PromptPair(clean, corrupt, (" " + right,), (" " + other,))
