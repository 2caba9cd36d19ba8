"""Plain-text tables and JSON output shared by the CLI commands."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".3f") -> str:
    """Render ``rows`` under ``headers`` as an aligned text table (numbers right-aligned)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else format(value, floatfmt)
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) if rows else False for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def to_jsonable(value: Any) -> Any:
    """Convert dataclasses, tuples, tensors and numpy scalars into JSON-friendly values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def dumps(value: Any) -> str:
    """JSON text of ``value`` (see :func:`to_jsonable`), indented for people and stable for tools."""
    return json.dumps(to_jsonable(value), indent=2, sort_keys=False)
