"""Saving figures: HTML always (atomic, and viewable offline: plotly.js is written once beside the HTML files of a
directory instead of being fetched from a CDN); PNG only when kaleido can render."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from circuitry.artifacts import atomic_write_bytes

PLOTLY_JS = "plotly.min.js"


def read_log(log_path: str | Path) -> list[dict]:
    """The rows of a JSONL training log (blank lines skipped)."""
    return [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]


def save_figure(fig, path: str | Path, png: bool = True) -> list[Path]:
    """Write ``path`` with .html (plus ``plotly.min.js`` in its directory if not there yet) and .png when possible;
    returns the files written."""
    from plotly.offline import get_plotlyjs

    path = Path(path).with_suffix("")
    html = path.with_suffix(".html")
    js = html.parent / PLOTLY_JS
    written = []
    if not js.exists():  # one copy (4.8 MB) per directory, not one per figure; no network needed to view the plots
        atomic_write_bytes(js, get_plotlyjs().encode())
        written.append(js)
    atomic_write_bytes(html, fig.to_html(include_plotlyjs=PLOTLY_JS, full_html=True).encode())
    written.append(html)
    if png:
        try:  # kaleido 1.x needs a Chrome/Chromium binary; without one, PNG is skipped
            with _quiet_browser_logs():
                image = fig.to_image(format="png", scale=2)
            atomic_write_bytes(path.with_suffix(".png"), image)
            written.append(path.with_suffix(".png"))
        except Exception:
            pass
    return written


@contextlib.contextmanager
def _quiet_browser_logs():
    """kaleido drives Chromium through choreographer, which now and then logs a traceback on stderr for a browser
    message it could not decode and then ignores ("JSONError decoding message. Ignoring"; the PNG is still written):
    silence those loggers while a PNG renders, so a command's stderr stays its own one-line messages."""
    loggers = [logging.getLogger(name) for name in ("choreographer", "kaleido", "logistro")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
