"""Figures for the self-contained HTML pages (run report, monitoring page): matplotlib on the
Agg backend, each figure embedded as a base64 PNG data URI — no file or network access to view."""

from __future__ import annotations

import base64
import io


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_data_uri(fig, dpi: int = 130) -> str:
    """The figure as a ``data:image/png;base64,…`` URI; the figure is closed afterwards."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
