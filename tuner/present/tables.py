"""Plain-text tables for the CLI: one renderer for `train`, `tune` and `best`."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["metric", "value", "table", "side_by_side"]


def metric(v: object) -> str:
    """A metric with 4 decimals; '-' for a missing or NaN one."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return "-"
    return f"{v:.4f}"


def value(v: object) -> str:
    """A config value: floats with 6 significant digits (also when they come as MLflow strings)."""
    if isinstance(v, str):
        try:
            return f"{float(v):.6g}" if "." in v else v
        except ValueError:
            return v
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: bool = False) -> str:
    """Columns padded to their widest cell; ``right`` aligns every column but the first to the right."""
    widths = [max([len(header[j]), *(len(r[j]) for r in rows)]) for j in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if j == 0 or not right else c.rjust(w)
                         for j, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), *(line(r) for r in rows)])


def side_by_side(keys: Sequence[str], columns: Sequence[tuple[str, Sequence[str]]]) -> str:
    """Keys down the left, one column per item (title, values in key order): configs compared."""
    return table(["", *(title for title, _ in columns)],
                 [[f"  {k}", *(vals[i] for _, vals in columns)] for i, k in enumerate(keys)])
