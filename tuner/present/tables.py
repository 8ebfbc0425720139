"""Plain-text tables for the CLI: one renderer for `train`, `tune` and `best`."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

__all__ = ["WIDTH", "metric", "value", "table", "side_by_side", "fit_width"]

WIDTH = 100  # the columns of everything losstune prints


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

    return "\n".join([line(header).rstrip(), *(line(r).rstrip() for r in rows)])


def side_by_side(keys: Sequence[str], columns: Sequence[tuple[str, Sequence[str]]]) -> str:
    """Keys down the left, one column per item (title, values in key order): configs compared."""
    return table(["", *(title for title, _ in columns)],
                 [[f"  {k}", *(vals[i] for _, vals in columns)] for i, k in enumerate(keys)])


def fit_width(items: Sequence[str], width: int = WIDTH) -> list[str]:
    """Lines of prose wrapped at ``width`` columns, each continuation indented two spaces more than
    its line; a command that ends a line (``…: losstune tune --resume PATH``) goes on a line of its
    own, unbroken; an item of several lines (a table, built to fit) is kept as it is."""
    out: list[str] = []
    for item in items:
        body = item.lstrip("\n")
        lead = item[:len(item) - len(body)]
        if "\n" in body or len(body) <= width:
            out.append(item)
            continue
        indent = " " * (len(body) - len(body.lstrip(" ")))
        command = ""
        at = body.find(": losstune ")
        if at >= 0:  # a command to copy ends the line: on a line of its own, never broken
            body, command = body[:at + 1], f"\n{indent}  {body[at + 2:].strip()}"
        wrapped = textwrap.wrap(body.strip(), width=width, initial_indent=indent, subsequent_indent=indent + "  ",
                                break_long_words=False, break_on_hyphens=False)
        out.append(lead + "\n".join(wrapped) + command)
    return out
