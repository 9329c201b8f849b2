"""Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" -> YY > 32.

Metric: P(YY > XX) - P(YY <= XX) over the two-digit tokens "00".."99". Corruption ``01``: the
start year becomes CC01, so (almost) every continuation counts as greater.
"""

from __future__ import annotations

import random

from circuitry.errors import CircuitryError
from circuitry.tasks.base import PromptPair, Task
from circuitry.tasks.words import LEXICON, Lexicon

TEMPLATES: tuple[str, ...] = (
    "The [NOUN] lasted from the year [CC][XX] to the year [CC]",
    "The [NOUN] went on from the year [CC][XX] to the year [CC]",
    "The [NOUN] ran from the year [CC][XX] until the year [CC]",
)
CENTURIES: tuple[str, ...] = ("11", "12", "13", "14", "15", "16", "17", "18")


def render(template: str, noun: str, cc: str, xx: str) -> str:
    return template.replace("[NOUN]", noun).replace("[CC]", cc).replace("[XX]", xx)


def sample_sentence(rng: random.Random, lex: Lexicon = LEXICON) -> str:
    """A complete sentence with an end year strictly after the start year (same century)."""
    xx = rng.randint(0, 98)
    yy = rng.randint(xx + 1, 99)
    cc = rng.choice(CENTURIES)
    return f"{render(rng.choice(TEMPLATES), rng.choice(lex.event_nouns), cc, f'{xx:02d}')}{yy:02d}."


class GreaterThanTask(Task):
    name = "greater-than"
    metric_kind = "prob_diff"
    corruptions = ("01",)
    description = "year comparison; metric P(YY > XX) - P(YY <= XX)"

    def setup(self) -> None:
        self.nouns, self.filtered["nouns"] = self.view.keep_single(LEXICON.event_nouns)
        self.years = [f"{y:02d}" for y in range(100)]
        if any(self.view.single_token(y) is None for y in self.years):
            raise CircuitryError("greater-than needs every two-digit number 00..99 to be a single token")
        # Start years whose tokens split as century + two digits, as in Hanna et al.
        ok = []
        for xx in range(2, 99):
            for cc in CENTURIES:
                if self.view.encode(f" {cc}{xx:02d}") == self.view.encode(f" {cc}") + self.view.encode(f"{xx:02d}"):
                    ok.append((cc, xx))
        self.filtered["start_years"] = 97 * len(CENTURIES) - len(ok)
        if not ok or not self.nouns:
            raise CircuitryError("greater-than: no usable start years or nouns for this tokenizer")
        self.start_years = ok

    def sample_pair(self, rng: random.Random) -> PromptPair:
        cc, xx = rng.choice(self.start_years)
        template, noun = rng.choice(TEMPLATES), rng.choice(self.nouns)
        clean = render(template, noun, cc, f"{xx:02d}")
        corrupt = render(template, noun, cc, "01")
        return PromptPair(clean, corrupt, tuple(self.years[xx + 1 :]), tuple(self.years[: xx + 1]))
