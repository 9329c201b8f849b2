"""Word-level tokenizer for the synthetic language, wrapped as a HuggingFace fast tokenizer.

Words and punctuation runs are tokens; digit runs split into pairs so "1732" is "17" + "32"
(as GPT-2 splits years). BOS is prepended by the post-processor, so ``HookedTransformer.to_tokens``
works unchanged. The vocabulary is the sorted set of pieces seen in a seeded corpus sample plus
every lexicon word and every two-digit number, so it is deterministic.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from circuitry.errors import CircuitryError
from circuitry.zoo.language import SyntheticLanguage

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIALS = (BOS, EOS, PAD, UNK)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Split(Regex(r"\d{2}"), behavior="isolated")]
    )


def build_vocab(language: SyntheticLanguage, n_sentences: int = 20000, seed: str = "tokenizer") -> list[str]:
    pre = _pre_tokenizer()
    pieces: set[str] = {f"{i:02d}" for i in range(100)}
    lex = language.lexicon
    words = [*lex.names, *lex.places, *lex.objects, *lex.adjectives, *lex.event_nouns, *lex.code_words]
    words += [*lex.doc_words, *lex.sva_preps, *(w for pair in lex.sva_nouns for w in pair)]
    words += [w for sg, pl, conts in lex.sva_verbs for w in (sg, pl, *conts)]
    words += [w for pair in lex.facts for w in pair]
    for text in [*words, *language.sentences(seed, n_sentences)]:
        pieces.update(p for p, _ in pre.pre_tokenize_str(text))
    return [*SPECIALS, *sorted(pieces - set(SPECIALS))]


def build_tokenizer(language: SyntheticLanguage | None = None, n_sentences: int = 20000) -> PreTrainedTokenizerFast:
    vocab = build_vocab(language or SyntheticLanguage(), n_sentences)
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=UNK))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # tokens joined by spaces: exact round trip
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab.index(BOS))]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, add_bos_token=True
    )
    hf.init_kwargs.setdefault("name_or_path", "circuitry-synthetic")  # TransformerLens reads this key
    return hf


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> None:
    tokenizer.save_pretrained(str(directory))


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise CircuitryError(f"missing tokenizer file {path}")
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:  # tokenizers raises plain Exceptions on malformed JSON
        raise CircuitryError(f"cannot read tokenizer in {directory}: {type(e).__name__}: {e}") from None
