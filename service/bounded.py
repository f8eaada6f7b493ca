"""A dict of at most ``capacity`` entries that drops its oldest to admit a new one: for lookups kept by keys that
clients choose (paths, request headers), so no client can grow it, and a flood of one-off keys cannot keep the
usual ones out for good."""

from __future__ import annotations

from typing import Any


class BoundedDict(dict):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def keep(self, key: Any, value: Any) -> Any:
        """Store ``value`` under ``key`` (dropping the oldest entry when full); returns ``value``."""
        if len(self) >= self.capacity and key not in self:
            del self[next(iter(self))]  # dicts keep insertion order
        self[key] = value
        return value
