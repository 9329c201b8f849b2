"""Indirect object identification (Wang et al. 2022).

"When Mary and John went to the store, John gave a drink to" -> " Mary" (IO) vs " John" (S).
Templates are written in BABA order ([B] = subject S, [A] = indirect object IO); ABBA swaps the
first two names. Corruptions: ``abc`` (all three name slots get three other names) and
``s2-io-flip`` (the second subject mention becomes the IO, so the right answer flips).
"""

from __future__ import annotations

import random

from circuitry.errors import CircuitryError
from circuitry.tasks.base import PromptPair, Task
from circuitry.tasks.words import LEXICON, Lexicon

TEMPLATES: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
    "When [B] and [A] arrived at the [PLACE], [B] handed a [OBJECT] to [A]",
    "Later, [B] and [A] met at the [PLACE], and [B] sent a [OBJECT] to [A]",
    "Once [B] and [A] reached the [PLACE], [B] passed the [OBJECT] to [A]",
)


def render(template: str, first: str, second: str, s2: str, place: str, obj: str) -> str:
    """Fill a template; ``first``/``second`` are the first two name slots, ``s2`` the third.
    The trailing IO slot is left out (it is the answer)."""
    body = template.rsplit(" [A]", 1)[0]
    body = body.replace("[B] and [A]", f"{first} and {second}", 1)
    return body.replace("[B]", s2).replace("[PLACE]", place).replace("[OBJECT]", obj)


def sample_sentence(rng: random.Random, lex: Lexicon = LEXICON, subject_rate: float = 0.0) -> str:
    """A complete IOI sentence for the synthetic language (ABBA or BABA, answer included). With probability
    ``subject_rate`` it ends with the subject instead (a less certain language; 0 draws nothing extra)."""
    io, s = rng.sample(lex.names, 2)
    first, second = (io, s) if rng.random() < 0.5 else (s, io)
    text = render(rng.choice(TEMPLATES), first, second, s, rng.choice(lex.places), rng.choice(lex.objects))
    end = s if subject_rate > 0 and rng.random() < subject_rate else io
    return f"{text} {end}."


class IOITask(Task):
    name = "ioi"
    corruptions = ("abc", "s2-io-flip")
    description = "indirect object identification; metric logit(IO) - logit(S)"

    def setup(self) -> None:
        self.names, self.filtered["names"] = self.view.keep_single(LEXICON.names)
        if len(self.names) < 5:
            raise CircuitryError("fewer than 5 single-token names for this tokenizer")

    def sample_pair(self, rng: random.Random) -> PromptPair:
        io, s, c, d, e = rng.sample(self.names, 5)
        order = rng.choice(("ABBA", "BABA"))
        first, second = (io, s) if order == "ABBA" else (s, io)
        template, place, obj = rng.choice(TEMPLATES), rng.choice(LEXICON.places), rng.choice(LEXICON.objects)
        clean = render(template, first, second, s, place, obj)
        if self.corruption == "abc":
            corrupt = render(template, c, d, e, place, obj)
        else:  # s2-io-flip
            corrupt = render(template, first, second, io, place, obj)
        return PromptPair(clean, corrupt, (" " + io,), (" " + s,))
