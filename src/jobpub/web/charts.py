"""Small inline SVG charts for the overview: drawn on the server, no script, no library."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup


def sparkline(
    values: Sequence[float | None], label: str, width: int = 240, height: int = 48
) -> Markup:
    """A line over `values` (oldest first; None is a gap drawn as 0), scaled to its max."""
    points = [v or 0.0 for v in values] or [0.0]
    top = max(points) or 1.0
    step = width / max(len(points) - 1, 1)
    pad = 2
    coords = " ".join(
        f"{i * step:.1f},{pad + (height - 2 * pad) * (1 - v / top):.1f}"
        for i, v in enumerate(points)
    )
    area = f"0,{height} {coords} {width},{height}"
    title = escape(f"{label}: max {top:g} over the last {len(points)} minutes")
    # Numbers formatted here and an escaped title: nothing of the caller's is unescaped.
    return Markup(  # noqa: S704
        f'<svg class="spark" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
        f'role="img" aria-label="{title}"><title>{title}</title>'
        f'<polygon points="{area}" class="spark-area"/>'
        f'<polyline points="{coords}" class="spark-line"/></svg>'
    )
