"""The rows a served version takes: the pydantic model of its input schema and the checks pydantic cannot make.

:func:`row_validator` builds the strict row model (no extra or missing column, no NaN or infinity, ``null`` only
where the preprocessing imputes; each number's range in its JSON Schema), :func:`bounds` the range a number keeps
finite in float32 after the version's own scaling, :func:`unreadable_dates` the values the preprocessor's date
parser reads as no date (and a batch's mixed UTC offsets), :func:`text_columns` the free-text columns whose values
must hold a word. ``serving/model.py`` applies them before any row reaches the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from uaap.data.preprocess import Preprocessor

ROW_TEXT_LIMIT = 10_000  # characters of one string value
FLOAT32_MAX = float(np.finfo(np.float32).max)
DATE_HINT = "ISO 8601 text, e.g. 2024-03-05 or 2024-03-05T10:00"


@dataclass(frozen=True)
class Column:
    """One raw input column."""

    name: str
    type: str  # number | string | datetime
    nullable: bool


def row_label(where: str, i: int) -> str:
    """How a message names the row: by its index in a batch, not at all for one row."""
    return f"row {i}: " if where == "rows" else ""


def unreadable_dates(values: list[Any]) -> list[tuple[int, str]]:
    """(index, why) of each non-null value the preprocessor's date parser reads as no date, read as it reads a
    batch's column (:func:`uaap.data.preprocess.parse_dates`); where pandas refuses the column for mixed UTC offsets,
    the values whose offset differs from the first one's."""
    import pandas as pd

    from uaap.data.preprocess import parse_dates

    try:
        when = parse_dates(pd.Series(values, dtype=object))
    except (ValueError, OverflowError) as exc:  # "Mixed timezones detected": one column, one offset
        found = mixed_offsets(values)
        first = next((i for i, v in enumerate(values) if v is not None), 0)
        return found or [
            (
                first,
                f"the column's values cannot be read together as dates ({exc}); send them as {DATE_HINT}, "
                "with one UTC offset",
            )
        ]
    return [(i, f"{v!r} is not a date or time") for i, (v, t) in enumerate(zip(values, when, strict=True))
            if v is not None and pd.isna(t)]  # fmt: skip


def mixed_offsets(values: list[Any]) -> list[tuple[int, str]]:
    import pandas as pd

    def one(v: str) -> Any:
        t = pd.to_datetime(v, errors="coerce", format="ISO8601")
        return pd.to_datetime(v, errors="coerce", format="mixed") if pd.isna(t) else t

    out: list[tuple[int, str]] = []
    first: tuple[int, Any] | None = None
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            t = one(v)
        except ValueError:
            t = pd.NaT
        if pd.isna(t):
            out.append((i, f"{v!r} is not a date or time"))
            continue
        offset = t.utcoffset()
        if first is None:
            first = (i, offset)
        elif offset != first[1]:
            out.append((i, f"{v!r} has {offset_text(offset)}, but row {first[0]} has {offset_text(first[1])}: the "
                           "rows of one batch must give a column one UTC offset (or none); convert the times to one "
                           "offset, e.g. UTC"))  # fmt: skip
    return out


def offset_text(offset: Any) -> str:
    """A UTC offset as ISO 8601 writes it (+02:00), or 'no UTC offset'."""
    if offset is None:
        return "no UTC offset"
    minutes = int(offset.total_seconds()) // 60
    sign, minutes = ("-" if minutes < 0 else "+"), abs(minutes)
    return f"UTC offset {sign}{minutes // 60:02d}:{minutes % 60:02d}"


def text_columns(pre: Preprocessor | None) -> set[str]:
    """The free-text columns of a raw table's fitted preprocessing (their values must hold a word)."""
    return set() if pre is None else {p.name for p in pre.plan_ if p.kind == "text"}


def bounds(spec: dict[str, Any], columns: list[Column], pre: Preprocessor | None) -> list[tuple[float, float] | None]:
    """Per number column, the values whose model inputs stay finite float32 numbers after the version's own
    scaling: ``(x - center) / scale`` (squared with polynomial features) within float32's max, and ``x`` itself
    too (``pre``: a raw table's fitted preprocessing, else ``spec`` standardises). Rounded inwards to 6 significant
    digits, so the range a message prints is one the model takes."""
    spans: dict[str, tuple[float, float]] = {}  # column -> (center, how far from it the input stays finite)
    if spec["kind"] == "standardize":
        for col, mean, std in zip(columns, spec["mean"], spec["std"], strict=True):
            spans[col.name] = (float(mean), float(std) * FLOAT32_MAX)
    elif pre is not None:  # a raw table's fitted preprocessing
        limit = math.sqrt(FLOAT32_MAX) if pre.options is not None and pre.options.polynomial else FLOAT32_MAX
        for plan in pre.plan_:
            if plan.kind == "numeric" and plan.name not in plan.low:  # clipped columns cannot overflow
                spans[plan.name] = (plan.center.get(plan.name, 0.0), plan.scale.get(plan.name, 1.0) * limit)
    out: list[tuple[float, float] | None] = []
    for col in columns:
        if col.type != "number":
            out.append(None)
            continue
        lo, hi = -FLOAT32_MAX, FLOAT32_MAX
        center, reach = spans.get(col.name, (0.0, math.inf))
        if math.isfinite(center) and reach > 0:
            lo, hi = max(lo, center - reach), min(hi, center + reach)
        out.append((rounded(lo, math.ceil), rounded(hi, math.floor)))
    return out


def rounded(x: float, direction: Any) -> float:
    """``x`` to 6 significant digits, rounded by ``direction`` (math.floor or math.ceil)."""
    if x == 0 or not math.isfinite(x):
        return x
    step = 10.0 ** (math.floor(math.log10(abs(x))) - 5)
    return float(f"{direction(x / step) * step:.6g}")


def exc_loc(loc: tuple[int | str, ...]) -> list[int | str]:
    """A pydantic error location as JSON-able parts."""
    return [p if isinstance(p, int) else str(p) for p in loc]


def row_validator(
    name: str, version: str, columns: list[Column], bounds: list[tuple[float, float] | None]
) -> tuple[Any, type[Any]]:
    """A TypeAdapter of ``list[Row]`` and the ``Row`` model of the schema (strict; column names as aliases). A
    number's range is in its JSON Schema (``minimum``, ``maximum``); :meth:`ServedModel.validate` checks it."""
    from typing import Annotated

    from pydantic import AllowInfNan, ConfigDict, Field, StringConstraints, TypeAdapter, create_model
    from pydantic.config import JsonDict

    fields: dict[str, Any] = {}
    for i, (col, span) in enumerate(zip(columns, bounds, strict=True)):
        base: Any = (
            Annotated[float, AllowInfNan(False)]
            if col.type == "number"
            else Annotated[str, StringConstraints(max_length=ROW_TEXT_LIMIT)]
        )
        typ = (base | None) if col.nullable else base
        extra: JsonDict | None = {"minimum": span[0], "maximum": span[1]} if span is not None else None
        fields[f"c{i}"] = (
            typ,
            Field(
                alias=col.name,
                description=f"{col.type}{', null allowed' if col.nullable else ''}",
                json_schema_extra=extra,
            ),
        )
    safe = "".join(ch if ch.isalnum() else "_" for ch in name)
    row = create_model(
        f"{safe}_v{version}_Row",
        __config__=ConfigDict(extra="forbid", strict=True, populate_by_name=False),
        **fields,
    )
    return TypeAdapter(list[row]), row  # type: ignore[valid-type]
