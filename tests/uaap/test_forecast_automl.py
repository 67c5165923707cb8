"""``uaap automl --task forecast``: expanding-window folds that never train on the future, per-series forecasters
ranked by summed cross-validated MASE, the winner scored on held-out tails it never saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uaap.automl.search import AutoMLSettings, run_automl
from uaap.config import RunConfig
from uaap.errors import ConfigError
from uaap.forecast import automl, models
from uaap.forecast.series import load

CFG = RunConfig(task="forecast", dataset="series", num_clients=3, series_length=60, horizon=6, seed=4,
                experiment="tests-forecast-automl")  # fmt: skip


def test_no_fold_trains_on_its_validation_window_or_later() -> None:
    for length, horizon, n in ((54, 6, 3), (108, 12, 5), (30, 1, 4)):
        pairs = automl.folds(length, horizon, n, 13)
        assert len(pairs) == n and pairs[-1][1][-1] == length - 1  # the last window ends where the history ends
        for train, valid in pairs:
            assert np.array_equal(train, np.arange(len(train)))  # a prefix: the past only, no gap
            assert train.max() < valid.min() and len(valid) == horizon
        assert [len(t) for t, _ in pairs] == sorted({len(t) for t, _ in pairs})  # expanding, one horizon a step


def test_the_search_hands_each_forecaster_only_the_past(monkeypatch: pytest.MonkeyPatch, module_home: Path) -> None:
    seen: list[np.ndarray] = []

    def spy(name: str, period: int) -> models.Forecaster:
        def forecast(history: np.ndarray, horizon: int) -> models.Forecast:
            seen.append(np.array(history))
            return models.seasonal_naive(history, horizon, period)

        return forecast

    monkeypatch.setattr(automl, "statistical", spy)
    result = run_automl(CFG, AutoMLSettings(folds=3, families=("seasonal_naive",), num_trials=1))
    every = load(CFG)
    cv_calls = [h for h in seen if len(h) < 54]  # 3 series x 3 folds, then the full histories for the test
    assert len(cv_calls) == 3 * 3 * 2  # the candidate, and seasonal naive as the baseline
    for history in cv_calls:
        owner = next(s for s in every if np.array_equal(s.values[: len(history)], history))
        assert len(history) + CFG.horizon <= len(owner.values) - CFG.horizon  # its window lies before the tail
    assert result.metric == "mase" and result.best["family"] == "seasonal_naive"


def test_the_search_ranks_forecasters_by_cv_mase_and_scores_the_tails(module_home: Path) -> None:
    from sklearn.metrics import mean_absolute_error

    result = run_automl(CFG, AutoMLSettings(folds=3, families=("seasonal_naive", "prophet"), num_trials=1))
    board = result.leaderboard
    assert [r["family"] for r in board] == sorted(("seasonal_naive", "prophet"), key=lambda f: next(
        r["score"] for r in board if r["family"] == f))  # fmt: skip
    assert result.best is board[0] and (result.run_dir.path / "leaderboard.csv").is_file()
    every = load(CFG)
    forecasts = [models.statistical(result.best["family"], 12)(s.history(6), 6).mean for s in every]
    tails = np.concatenate([s.tail(6) for s in every])
    assert result.test_metrics["mae"] == pytest.approx(mean_absolute_error(tails, np.concatenate(forecasts)))
    assert '"model": "' + result.best["family"] in result.model_path.read_text()
    with pytest.raises(ConfigError, match="--task forecast searches the per-series forecasters, not 'logreg'"):
        run_automl(CFG, AutoMLSettings(families=("logreg",), num_trials=1))


def test_the_comparator_shows_forecast_runs_with_mae_smape_and_mase(module_home: Path) -> None:
    from rich.console import Console

    from uaap.compare import collect_runs, compare_table

    rows = collect_runs(experiment=CFG.experiment, kinds=("automl",))
    assert rows and all(r.metric == "mase" and set(r.forecast) == {"mae", "smape", "mase"} for r in rows)
    assert all(r.value == r.forecast["mase"] for r in rows)
    console = Console(width=250, record=True)
    console.print(compare_table(rows))
    text = console.export_text()
    assert "final mase" in text and all(col in text for col in ("MAE", "sMAPE %", "MASE"))
    assert f"{rows[0].forecast['mae']:.4g}" in text
