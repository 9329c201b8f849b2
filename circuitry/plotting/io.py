"""Saving figures: HTML always (atomic, and viewable offline: plotly.js is written once beside the HTML files of a
directory instead of being fetched from a CDN); PNG only when kaleido can render."""

from __future__ import annotations

import json
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
            atomic_write_bytes(path.with_suffix(".png"), fig.to_image(format="png", scale=2))
            written.append(path.with_suffix(".png"))
        except Exception:
            pass
    return written
