"""The prediction cache: a bounded LRU keyed on (model, version, the row's validated values in schema order).

Validation makes the key canonical: values come out of the version's pydantic row model (``1`` and ``1.0`` are
one float, the columns in schema order whatever order the client sent). A moved alias drops the old version's
rows (:meth:`RowCache.drop`), so a version never answers for another.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class RowCache:
    """A bounded LRU of predictions keyed on (model, version, the row's validated values in schema order)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: tuple[Any, ...]) -> dict[str, Any] | None:
        """The cached prediction, marked most recently used."""
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
            return hit

    def put(self, key: tuple[Any, ...], value: dict[str, Any]) -> None:
        """Store a prediction, evicting the least recently used beyond the bound."""
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def drop(self, model: str, version: str) -> int:
        """Forget one version's rows (its alias moved); returns how many."""
        with self._lock:
            stale = [k for k in self._data if k[0] == model and k[1] == version]
            for k in stale:
                del self._data[k]
            return len(stale)
