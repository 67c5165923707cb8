"""PCA from summed statistics: the row count, the column sums and X^T X give the pooled covariance exactly.

Each part (client) sends ``n``, ``sum x`` and ``X^T X`` of its rows (:func:`local_statistics`); their totals
give the mean and the covariance ``(X^T X - sum x sum x^T / n) / (n - 1)`` of the pooled rows, whose
eigenvectors are the principal axes (:meth:`FederatedPCA.from_statistics`). Sums add in the clear or as CKKS
ciphertext. The one-pass formula loses precision when the mean is large against the spread: scaled features
(the data pipeline's default) keep it near float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from uaap.errors import ConfigError, DataError


@dataclass(frozen=True)
class PCAStatistics:
    """One part's sufficient statistics: rows, column sums and the Gram matrix X^T X."""

    n: float
    sum: np.ndarray  # (d,)
    xtx: np.ndarray  # (d, d)


def _rows(table: Any) -> np.ndarray:
    X: np.ndarray = np.asarray(table, dtype=np.float64)
    if X.ndim != 2:
        raise DataError(f"PCA needs a 2-D table; got an array of shape {X.shape}")
    if not np.isfinite(X).all():
        raise DataError(f"PCA needs finite values; the table has {int((~np.isfinite(X)).sum())} NaN/Inf")
    return X


def local_statistics(X: Any) -> PCAStatistics:
    """``n``, ``sum x`` and ``X^T X`` of these rows (float64)."""
    X = _rows(X)
    return PCAStatistics(float(len(X)), X.sum(axis=0), X.T @ X)


class FederatedPCA(TransformerMixin, BaseEstimator):  # type: ignore[misc]  # sklearn: untyped
    """Principal component analysis from summed statistics (scikit-learn compatible).

    Fitted like scikit-learn's PCA: ``mean_``, ``components_`` (n_components, d; each row's largest entry in
    absolute value is positive), ``explained_variance_``, ``explained_variance_ratio_``, ``singular_values_``,
    ``n_samples_`` and ``n_features_in_``.
    """

    def __init__(self, n_components: int = 2):
        self.n_components = n_components

    def fit(self, X: Any, y: Any = None) -> FederatedPCA:
        """Fit on one table (its statistics, as a federation of one would send them)."""
        s = local_statistics(X)
        return self.fit_statistics(s.n, s.sum, s.xtx)

    @classmethod
    def from_statistics(cls, n: float, total: np.ndarray, xtx: np.ndarray, n_components: int) -> FederatedPCA:
        """A fitted estimator from the summed statistics of every part."""
        return cls(n_components).fit_statistics(n, total, xtx)

    def fit_statistics(self, n: float, total: np.ndarray, xtx: np.ndarray) -> FederatedPCA:
        """Fit from summed ``n``, ``sum x`` and ``X^T X``."""
        total = np.asarray(total, dtype=np.float64).ravel()
        xtx = np.asarray(xtx, dtype=np.float64)
        d = len(total)
        n = float(np.rint(n)) if abs(n - np.rint(n)) < 1e-3 else float(n)  # a CKKS-decrypted count: whole
        if xtx.shape != (d, d):
            raise DataError(f"X^T X has shape {xtx.shape}; the sums give {d} features, so ({d}, {d}) was expected")
        if n < 2:
            raise DataError(f"PCA needs at least 2 rows in total; the statistics count {n:g}")
        if not 1 <= self.n_components <= d:
            raise ConfigError(f"n-components={self.n_components} must be between 1 and the {d} features")
        mean = total / n
        cov = (xtx - np.outer(total, total) / n) / (n - 1)
        cov = (cov + cov.T) / 2
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        vectors = vectors[:, order].T
        signs = np.sign(vectors[np.arange(d), np.abs(vectors).argmax(axis=1)])
        vectors *= np.where(signs == 0, 1.0, signs)[:, None]
        k = self.n_components
        total_var = float(np.trace(cov))
        self.mean_ = mean
        self.components_ = vectors[:k]
        self.explained_variance_ = values[:k]
        self.explained_variance_ratio_ = values[:k] / total_var if total_var > 0 else np.zeros(k)
        self.singular_values_ = np.sqrt(values[:k] * (n - 1))
        self.n_samples_ = int(round(n))
        self.n_features_in_ = d
        self.n_components_ = k
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Project rows onto the principal axes."""
        return np.asarray((self._check(X) - self.mean_) @ self.components_.T)

    def inverse_transform(self, Z: Any) -> np.ndarray:
        """Rows back in feature space from their projections."""
        return np.asarray(np.asarray(Z, dtype=np.float64) @ self.components_ + self.mean_)

    def evaluate(self, X: Any, y: Any = None) -> dict[str, float]:
        """The share of ``X``'s variance (about the fitted mean) its projection keeps, and the fitted explained
        variance ratio of the kept components."""
        X = self._check(X)
        centred = X - self.mean_
        residual = centred - (centred @ self.components_.T) @ self.components_
        total = float((centred**2).sum())
        kept = 1.0 - float((residual**2).sum()) / total if total > 0 else 0.0
        return {"explained_variance": kept, "explained_variance_ratio": float(self.explained_variance_ratio_.sum())}

    def _check(self, table: Any) -> np.ndarray:
        if not hasattr(self, "components_"):
            raise ConfigError("this FederatedPCA is not fitted yet: call fit (or from_statistics) first")
        X = _rows(table)
        if X.shape[1] != self.n_features_in_:
            raise DataError(f"rows have {X.shape[1]} features; the model has {self.n_features_in_}")
        return X
