"""Docstring argument completion (Heimersheim & Janiak 2023).

    def load(self, size, files, last, port):
        \"\"\"oil column piece

        :param size: crime population
        :param files: unit dark
        :param            -> " last"

Corruption ``random-def``: the arguments in the signature are replaced by other names (the
docstring keeps the originals). Metric: logit(correct arg) - max logit of the other signature args.
"""

from __future__ import annotations

import random

from circuitry.errors import CircuitryError
from circuitry.tasks.base import PromptPair, Task
from circuitry.tasks.words import LEXICON, Lexicon

N_ARGS = 4  # arguments in task prompts; the third is asked for


def render(fn: str, args: list[str], desc: list[str], documented: list[tuple[str, list[str]]]) -> str:
    head = f'def {fn}(self, {", ".join(args)}):\n    """{" ".join(desc)}\n'
    params = "".join(f"\n    :param {a}: {' '.join(ws)}" for a, ws in documented)
    return head + params


def sample_sentence(rng: random.Random, lex: Lexicon = LEXICON) -> str:
    """A complete function header whose docstring documents every argument, in order."""
    fn, *args = rng.sample(lex.code_words, rng.randint(3, 5) + 1)
    desc = rng.sample(lex.doc_words, 3)
    documented = [(a, rng.sample(lex.doc_words, 2)) for a in args]
    return render(fn, args, desc, documented) + '\n    """\n.'


class DocstringTask(Task):
    name = "docstring"
    corruptions = ("random-def",)
    description = "docstring argument completion; metric logit(next arg) - max logit(other args)"

    def setup(self) -> None:
        self.words, self.filtered["code_words"] = self.view.keep_single(LEXICON.code_words)
        if len(self.words) < 2 * N_ARGS + 1:
            raise CircuitryError("docstring: too few single-token argument names for this tokenizer")

    def sample_pair(self, rng: random.Random) -> PromptPair:
        fn, *names = rng.sample(self.words, 2 * N_ARGS + 1)
        args, others = names[:N_ARGS], names[N_ARGS:]
        desc = rng.sample(LEXICON.doc_words, 3)
        documented = [(a, rng.sample(LEXICON.doc_words, 2)) for a in args[:2]]
        clean = render(fn, args, desc, documented) + "\n    :param"
        corrupt = render(fn, others, desc, documented) + "\n    :param"
        wrong = tuple(" " + a for a in args if a != args[2])
        return PromptPair(clean, corrupt, (" " + args[2],), wrong)
