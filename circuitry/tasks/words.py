"""The lexicon shared by the tasks and the synthetic language (plain English words).

Tasks filter these lists down to what is a single token for the model at hand, so the same
task runs on the shipped zoo models and on GPT-2-style tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lexicon:
    names: tuple[str, ...]
    places: tuple[str, ...]
    objects: tuple[str, ...]
    adjectives: tuple[str, ...]
    event_nouns: tuple[str, ...]
    sva_nouns: tuple[tuple[str, str], ...]  # (singular, plural)
    sva_verbs: tuple[tuple[str, str, tuple[str, ...]], ...]  # (singular, plural, continuations)
    sva_preps: tuple[str, ...]
    code_words: tuple[str, ...]  # function / argument names for the docstring family
    doc_words: tuple[str, ...]  # words used in docstring descriptions
    facts: tuple[tuple[str, str], ...]  # (country, capital)


LEXICON = Lexicon(
    names=tuple(
        """Aaron Adam Alan Alex Alice Amy Andrew Anna Anthony Arthur Austin Blake Brandon Brian Carter
        Charles Charlie Chris Claire Clark Cole Connor Daniel David Dean Edward Elizabeth Emily Eric Eva
        Frank George Grace Graham Grant Henry Ian Jack Jacob Jake James Jamie Jane Jason Jay Jennifer
        Jeremy Jessica John Jonathan Jordan Joseph Joshua Justin Kate Kelly Kevin Kyle Laura Leon Lewis
        Lisa Louis Lucy Luke Marco Marcus Maria Mark Martin Mary Matthew Max Michael Michelle Morgan
        Nancy Nick Oliver Patrick Paul Peter Rachel Richard Robert Rose Ruby Russell Ryan Sam Sarah
        Scott Sean Simon Sophie Stephen Steven Taylor Thomas Tim Tom Tony Tyler Victoria William""".split()
    ),
    places=tuple(
        """store garden restaurant school hospital office house station park market library museum beach
        bank church hotel theater kitchen airport farm river forest cafe gym mall zoo lake bridge castle
        village""".split()
    ),
    objects=tuple(
        """ring kiss bone basketball computer necklace drink snack book letter ball cake flower gift key
        map pen phone ticket watch apple bag coin hat lamp note cup box card candle""".split()
    ),
    adjectives=tuple("big small red blue old new happy quiet bright dark warm cold long short".split()),
    event_nouns=tuple(
        """war trial tour voyage journey siege reign project study campaign expedition dynasty treaty
        marriage rivalry festival strike plague drought boom crisis conflict program contract
        partnership friendship pilgrimage""".split()
    ),
    sva_nouns=(
        ("dog", "dogs"), ("cat", "cats"), ("teacher", "teachers"), ("doctor", "doctors"),
        ("student", "students"), ("king", "kings"), ("farmer", "farmers"), ("author", "authors"),
        ("pilot", "pilots"), ("girl", "girls"), ("boy", "boys"), ("friend", "friends"),
        ("bird", "birds"), ("horse", "horses"), ("lawyer", "lawyers"), ("singer", "singers"),
        ("officer", "officers"), ("nurse", "nurses"), ("baker", "bakers"), ("player", "players"),
        ("worker", "workers"), ("driver", "drivers"), ("writer", "writers"), ("queen", "queens"),
    ),
    sva_verbs=(
        ("is", "are", ("happy", "here", "tired", "ready")),
        ("was", "were", ("happy", "there", "late", "busy")),
        ("has", "have", ("a {object}", "a plan", "time")),
        ("runs", "run", ("fast", "home", "away")),
        ("sings", "sing", ("well", "loudly", "today")),
        ("walks", "walk", ("home", "slowly", "alone")),
        ("sleeps", "sleep", ("late", "well", "outside")),
        ("eats", "eat", ("a lot", "slowly", "early")),
        ("likes", "like", ("the {object}", "the {place}", "music")),
        ("laughs", "laugh", ("often", "loudly", "a lot")),
    ),
    sva_preps=("near", "behind", "with", "beside", "under", "for", "next to", "like"),
    code_words=tuple(
        """load size files last data name path value key mode text item user node page line port count
        index state model image token query result source target config context field format width
        height color label prefix suffix parent child group table column row order limit offset
        timeout retry buffer stream window""".split()
    ),
    doc_words=tuple(
        """oil column piece crime population unit dark river stone paper light sound water fire metal
        glass wood cloud earth field voice money power time space market world""".split()
    ),
    facts=(
        ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
        ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
        ("Greece", "Athens"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
        ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Austria", "Vienna"), ("Poland", "Warsaw"),
        ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Cuba", "Havana"), ("Chile", "Santiago"),
        ("Thailand", "Bangkok"), ("Turkey", "Ankara"), ("Iran", "Tehran"), ("India", "Delhi"),
    ),
)
