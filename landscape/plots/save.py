"""Writing a figure: atomically (``io.write_bytes``), in the format its suffix names, with landscape's mark."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import matplotlib

from ..io import MARKED_FIGURES, output_mark, write_bytes


def save_figure(fig: Any, path: str | os.PathLike, dpi: float | None = None) -> Path:
    """``fig.savefig`` to ``path`` atomically, in the format its suffix names (png, pdf, svg, ...). PNG, PDF,
    SVG(Z), EPS and PS carry landscape's mark as their Creator metadata (``io.written_by_landscape``); the
    other formats (JPEG, TIFF, WebP, ...) cannot, so a later run treats such a file as a user's. Cost: one
    render into memory."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or matplotlib.rcParams["savefig.format"]
    kw = {"metadata": {"Creator": f"{output_mark()} with Matplotlib {matplotlib.__version__}"}} \
        if fmt in MARKED_FIGURES else {}
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, **kw)
    return write_bytes(path, buf.getvalue())
