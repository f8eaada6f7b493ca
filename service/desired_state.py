"""What a model should be serving, shared by the workers of one server through small JSON files.

A repository API call reaches one worker; it applies the change and writes the model's desired
state here, and every other worker applies it at its next sync (``Lifecycle.sync_once``). The
folder sits inside BentoML's ``PROMETHEUS_MULTIPROC_DIR``, which BentoML empties at every server
start, so a restarted server starts from the registry, while a restarted worker catches up.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("service.desired_state")


def default_folder() -> Path | None:
    """``$PROMETHEUS_MULTIPROC_DIR/modelserve-state`` under ``bentoml serve``; None in a lone process."""
    base = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(base) / "modelserve-state" if base else None


class DesiredState:
    """Per model: ``{"seq", "primary", "rollout", "loaded"}``; the newest write wins."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def write(self, name: str, state: dict[str, Any]) -> int:
        """Record ``state`` for ``name`` (atomically); returns its sequence number (0 when disabled)."""
        if self.folder is None:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        seq = time.time_ns()
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump({**state, "seq": seq}, f)
        os.replace(tmp, self.folder / f"{name}.json")
        return seq

    def newer(self, applied: dict[str, int]) -> list[tuple[str, dict[str, Any]]]:
        """(name, state) of every model whose state is newer than the sequence number in ``applied``."""
        if self.folder is None or not self.folder.is_dir():
            return []
        out = []
        for path in self.folder.glob("*.json"):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):  # being replaced right now: read it next time
                continue
            if state.get("seq", 0) > applied.get(path.stem, 0):
                out.append((path.stem, state))
        return out
