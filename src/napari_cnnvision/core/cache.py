"""A small least-recently-used cache (models, network outputs) shared by the backends."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable


class LRUCache:
    """At most ``size`` entries; the least recently used one is dropped first.

    ``get_or_make(key, make)`` returns ``(value, hit)``: the cached value, or ``make()``'s
    (stored) when the key is new.
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError("an LRU cache needs room for at least one entry")
        self.size = int(size)
        self._data: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable, default=None):
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key]
        return default

    def put(self, key: Hashable, value) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def get_or_make(self, key: Hashable, make: Callable[[], object]):
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key], True
        self.misses += 1
        value = make()
        self.put(key, value)
        return value, False

    def clear(self) -> None:
        self._data.clear()
