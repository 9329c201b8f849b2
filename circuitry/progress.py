"""Progress bars for the long loops of the library: shown when asked (``progress=True``), hidden by default
(``False``, quiet library calls and tests), and on a terminal only when ``None`` (what the CLI passes)."""

from __future__ import annotations

from typing import Iterable

from tqdm.auto import tqdm  # widget bars in a notebook with ipywidgets, text bars elsewhere; every bar comes from here


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 progress: bool | None = False) -> tqdm:  # fmt: skip
    """A tqdm bar that disappears when done (``leave=False``)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, disable=None if progress is None else not progress)
