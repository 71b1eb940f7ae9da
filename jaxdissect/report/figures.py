"""Matplotlib figures for reports, without pyplot's global state (safe in threads and servers)."""
from __future__ import annotations

import io


def new_figure(figsize: tuple[float, float], dpi: int = 100):
    """A matplotlib Figure (matplotlib is the optional 'plots' extra, imported here)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("report plots need matplotlib: pip install 'jaxdissect[plots]'") from None
    return Figure(figsize=figsize, dpi=dpi, layout="constrained")


def figure_png(fig) -> bytes:
    """The figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
