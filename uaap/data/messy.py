"""A generated table as messy as a real one: numbers, categories, dates and free text, with holes and outliers.

Used by the tests, ``benchmarks/data.py`` and the docs to take the whole path from raw rows to a model without
downloading anything. The targets depend on the features through the dirty columns (a category, a date part,
a number with outliers), so a pipeline that mishandles them scores worse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

CITIES = ("Paris", "Lyon", "Lille", "Nantes", "Nice", "Brest", "Dijon", "Metz")
WORDS = ("pain", "fever", "cough", "rash", "tired", "dizzy", "nausea", "ok", "better", "worse", "sleep", "stress")


def messy_table(
    rows: int = 1000,
    *,
    seed: int = 0,
    missing: float = 0.10,
    outliers: float = 0.03,
    extra_numeric: int = 0,
    text: bool = True,
) -> pd.DataFrame:
    """``rows`` rows of ``age``, ``income``, ``score``, ``city``, ``plan``, ``visit`` (ISO dates as text),
    ``notes`` (free text), ``extra_*`` numbers, and two targets: ``label`` (yes/no) and ``cost`` (a float).

    A share ``missing`` of each feature's cells is empty and ``outliers`` of the numeric cells are far off.
    ``text=False`` leaves ``notes`` out (generating words is the slow part of a million rows).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    age = rng.normal(45, 12, rows).round()
    income = rng.lognormal(10, 0.5, rows)
    score = rng.normal(0, 1, rows)
    city = rng.choice(CITIES, rows, p=np.linspace(2, 1, len(CITIES)) / np.linspace(2, 1, len(CITIES)).sum())
    plan = rng.choice(["basic", "plus", "premium"], rows)
    day0 = np.datetime64("2023-01-01T00:00")
    visit = day0 + rng.integers(0, 730 * 24, rows).astype("timedelta64[h]")
    notes = [" ".join(rng.choice(WORDS, rng.integers(2, 7))) for _ in range(rows)] if text else [""] * rows
    extras = {f"extra_{i}": rng.normal(i, 1 + i, rows) for i in range(extra_numeric)}
    month = visit.astype("datetime64[M]").astype(int) % 12 + 1
    signal = (
        0.05 * (age - 45)
        + 0.8 * np.log(income / 22000)
        + score
        + np.isin(city, CITIES[:3]) * 0.9
        + (plan == "premium") * 0.7
        + np.cos(2 * np.pi * month / 12) * 0.6
        + np.array([n.count("pain") + n.count("fever") for n in notes]) * 0.4
    )
    label = np.where(signal + rng.normal(0, 0.5, rows) > np.median(signal), "yes", "no")
    cost = 1000 + 300 * signal + rng.normal(0, 60, rows)
    frame = pd.DataFrame(
        {
            "age": age,
            "income": income,
            "score": score,
            "city": city,
            "plan": plan,
            "visit": pd.Series(visit).dt.strftime("%Y-%m-%dT%H:%M"),
            **({"notes": notes} if text else {}),
            **extras,
            "label": label,
            "cost": cost.round(2),
        }
    )
    numeric = ["age", "income", "score", *extras]
    for col in numeric:  # outliers: far beyond the IQR fence, both sides
        far = rng.random(rows) < outliers
        frame.loc[far, col] = frame[col].median() + rng.choice([-1, 1], far.sum()) * 25 * frame[col].std()
    for col in [*numeric, "city", "plan", "visit", *(["notes"] if text else [])]:
        holes = rng.random(rows) < missing
        frame.loc[holes, col] = None
    return frame
