"""Saving figures: HTML always (self-contained, atomic); PNG only when kaleido can render."""

from __future__ import annotations

from pathlib import Path

from circuitry.artifacts import atomic_write_bytes


def save_figure(fig, path: str | Path, png: bool = True) -> list[Path]:
    """Write ``path`` with .html (and .png when possible); returns the files written."""
    path = Path(path).with_suffix("")
    html = path.with_suffix(".html")
    atomic_write_bytes(html, fig.to_html(include_plotlyjs="cdn", full_html=True).encode())
    written = [html]
    if png:
        try:  # kaleido 1.x needs a Chrome/Chromium binary; without one, PNG is skipped
            atomic_write_bytes(path.with_suffix(".png"), fig.to_image(format="png", scale=2))
            written.append(path.with_suffix(".png"))
        except Exception:
            pass
    return written
