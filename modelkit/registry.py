"""The model registry on disk: ``exported/<name>/<version>/`` plus ``exported/<name>/LATEST``.

Versions are written to a hidden staging folder and renamed into place only when
complete, so a crash never leaves a half-written version behind. Every move of ``LATEST``
(publish, import, promote, rollback) replaces the file atomically and appends one record to
``exported/<name>/HISTORY.jsonl``, under a per-model lock file so that concurrent writers
(the CLI, service workers) keep ``LATEST`` and the history consistent. Torch-free.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .manifest import FileEntry, Manifest

MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
HISTORY_FILE = "HISTORY.jsonl"
LOCK_FILE = ".lock"
STAGING_PREFIX = ".staging-"


class RegistryError(Exception):
    """A registry folder or manifest is missing, invalid or does not match its files."""


class GateRefused(RegistryError):
    """The version failed its quality gate, so it may not become LATEST."""


Action = Literal["publish", "import", "promote", "rollback"]


class HistoryRecord(BaseModel):
    """One move of ``LATEST``: one JSON line of ``<name>/HISTORY.jsonl``.

    ``from`` is the previous LATEST (null for a model's first version). Unknown keys are
    ignored on reading, so later writers may add fields without breaking older readers.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    when: datetime  # UTC
    who: str
    action: Action
    name: str
    from_version: str | None = Field(alias="from")
    to_version: str = Field(alias="to")
    why: str = ""

    def to_json(self) -> str:
        data = self.model_dump(mode="json", by_alias=True)
        data["when"] = self.when.astimezone(timezone.utc).isoformat(timespec="seconds")
        return json.dumps(data, ensure_ascii=False)


def default_root() -> Path:
    """Registry root: $MODEL_REGISTRY or ./exported."""
    return Path(os.environ.get("MODEL_REGISTRY", "exported"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(version_dir: Path) -> list[FileEntry]:
    """Checksums of every file in a version folder except the manifest itself."""
    entries = []
    for p in sorted(version_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST_FILE:
            entries.append(
                FileEntry(path=p.relative_to(version_dir).as_posix(), sha256=sha256_file(p), size=p.stat().st_size)
            )
    return entries


def verify_files(manifest: Manifest, version_dir: Path) -> None:
    """Raise RegistryError naming the first missing or altered file."""
    for entry in manifest.files:
        p = version_dir / entry.path
        if not p.is_file():
            raise RegistryError(f"{manifest.name}/{manifest.version}: file missing: {entry.path}")
        size = p.stat().st_size
        if size != entry.size:
            raise RegistryError(
                f"{manifest.name}/{manifest.version}: {entry.path} is {size} bytes, manifest says {entry.size}"
            )
        if sha256_file(p) != entry.sha256:
            raise RegistryError(f"{manifest.name}/{manifest.version}: checksum mismatch for {entry.path}")


def new_version_id(now: datetime | None = None) -> str:
    """Sortable, unique-per-second version id, e.g. ``20261123-130501``."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")


def staging_dir(root: Path, name: str) -> Path:
    """A fresh hidden folder under ``root/name`` to build a version in."""
    parent = root / name
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))


def publish(
    root: Path,
    staging: Path,
    manifest: Manifest,
    *,
    servable: bool = True,
    action: Action = "publish",
    why: str = "new version passed its gate",
    who: str | None = None,
) -> Path:
    """Checksum the staged files, write the manifest, rename into place, update LATEST.

    ``servable=False`` (a model that failed its gate) keeps the version for inspection
    but leaves LATEST untouched, so serving never picks it up. A servable version becomes
    LATEST and the move is recorded in the history as ``action``.
    """
    manifest.files = file_entries(staging)
    manifest.dump(staging / MANIFEST_FILE)
    Manifest.load(staging / MANIFEST_FILE)  # round-trip check before publishing
    name = manifest.name
    final = root / name / manifest.version
    with model_lock(root, name):
        if final.exists():
            raise RegistryError(f"version {name}/{manifest.version} exists; versions are never overwritten")
        os.replace(staging, final)
        if servable:
            _move_latest(root, name, manifest.version, action=action, why=why, who=who)
    return final


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def set_latest(root: Path, name: str, version: str) -> None:
    """Point LATEST at ``version`` atomically (a unique temp file, then ``os.replace``).

    Low level: no gate check and no history record; :func:`promote` does both.
    """
    if not (root / name / version / MANIFEST_FILE).is_file():
        raise RegistryError(f"cannot point LATEST at {name}/{version}: no manifest there")
    fd, tmp = tempfile.mkstemp(prefix=f".{LATEST_FILE}.", suffix=".tmp", dir=root / name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / name / LATEST_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def latest_version(root: Path, name: str) -> str | None:
    p = root / name / LATEST_FILE
    return p.read_text(encoding="utf-8").strip() if p.is_file() else None


def model_names(root: Path) -> list[str]:
    """Names with a LATEST pointer (servable models)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / LATEST_FILE).is_file())


def load_version(root: Path, name: str, version: str | None = None, *, verify: bool = True) -> tuple[Manifest, Path]:
    """Manifest and folder of ``name`` at ``version`` (LATEST when None), checksums verified."""
    version = version or latest_version(root, name)
    if not version:
        raise RegistryError(f"{name}: no LATEST file under {root / name}")
    vdir = root / name / version
    mpath = vdir / MANIFEST_FILE
    if not mpath.is_file():
        raise RegistryError(f"{name}/{version}: {mpath} not found")
    try:
        manifest = Manifest.load(mpath)
    except Exception as exc:  # pydantic ValidationError or JSON error
        raise RegistryError(f"{name}/{version}: invalid manifest: {exc}") from exc
    if manifest.name != name or manifest.version != version:
        raise RegistryError(f"{mpath} names {manifest.name}/{manifest.version}, expected {name}/{version}")
    if verify:
        verify_files(manifest, vdir)
    return manifest, vdir


@dataclass
class RegistryRow:
    name: str
    version: str
    task: str
    metric: str
    value: float | None
    baseline: float | None
    gate: str
    size_bytes: int
    created: str
    latest: bool


def is_imported(manifest: Manifest) -> bool:
    """True for a version made by ``python -m training import`` (not trained by this pipeline)."""
    return manifest.training.preset == "imported"


def _gate_cell(m: Manifest) -> str:
    if not m.gate.passed:
        return "FAIL"
    return "ungated" if is_imported(m) and not m.gate.criteria else "pass"


def list_versions(root: Path) -> list[RegistryRow]:
    """Every version folder with a readable manifest (gate failures included)."""
    rows: list[RegistryRow] = []
    if not root.is_dir():
        return rows
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        latest = latest_version(root, name_dir.name)
        for vdir in sorted(p for p in name_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                m = Manifest.load(vdir / MANIFEST_FILE)
            except Exception:
                continue
            baseline_values = [b[m.headline_metric] for b in m.baseline_metrics.values() if m.headline_metric in b]
            rows.append(
                RegistryRow(
                    name=m.name,
                    version=m.version,
                    task=m.task,
                    metric=m.headline_metric,
                    value=m.metrics.get("fp32", {}).get(m.headline_metric),
                    baseline=max(baseline_values) if baseline_values else None,
                    gate=_gate_cell(m),
                    size_bytes=sum(f.size for f in m.files),
                    created=m.created_at.strftime("%Y-%m-%d %H:%M"),
                    latest=(m.version == latest),
                )
            )
    return rows


# ---------------------------------------------------------------- lifecycle: LATEST moves and history


@contextmanager
def model_lock(root: Path, name: str) -> Iterator[None]:
    """Exclusive lock on ``root/name`` (``flock`` on a hidden lock file) for LATEST + history updates."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def current_user() -> str:
    """Who moves LATEST when nobody says: $MODELSERVE_USER, else the login name, else "unknown"."""
    try:
        return os.environ.get("MODELSERVE_USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (e.g. an arbitrary container uid)
        return "unknown"


def read_history(root: Path, name: str) -> list[HistoryRecord]:
    """Every recorded LATEST move of ``name``, oldest first ([] when there is no history file).

    A torn last line (a writer died mid-append) is ignored; any other malformed line is a
    RegistryError naming file and line.
    """
    path = root / name / HISTORY_FILE
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(HistoryRecord.model_validate_json(line))
        except ValidationError as exc:
            if n == len(lines):  # no trailing newline: the append never finished
                break
            raise RegistryError(f"{path}:{n}: invalid history record: {exc.errors()[0]['msg']}") from None
    return records


def _append_history(root: Path, record: HistoryRecord) -> None:
    path = root / record.name / HISTORY_FILE
    with open(path, "a", encoding="utf-8") as f:
        f.write(record.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


def _move_latest(root: Path, name: str, version: str, *, action: Action, why: str, who: str | None) -> HistoryRecord:
    """Point LATEST at ``version`` and record the move (caller holds the model lock)."""
    previous = latest_version(root, name)
    set_latest(root, name, version)
    record = HistoryRecord(
        when=datetime.now(timezone.utc), who=who or current_user(), action=action, name=name,
        from_version=previous, to_version=version, why=why,
    )
    _append_history(root, record)
    return record


def versions_of(root: Path, name: str) -> list[str]:
    """Version folders of ``name`` (sorted; staging folders excluded)."""
    folder = root / name
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_known(root: Path, name: str, version: str | None = None) -> None:
    """RegistryError naming what exists when ``name`` (or ``name/version``) is unknown."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    if name not in names or not versions_of(root, name):
        raise RegistryError(f"unknown model {name!r} in {root}; models: {', '.join(names) or 'none'}")
    if version is not None and version not in versions_of(root, name):
        raise RegistryError(f"{name}: unknown version {version!r}; versions: {', '.join(versions_of(root, name))}")


def _failed_gate_reasons(manifest: Manifest) -> str:
    fails = [r for r in manifest.gate.reasons if not r.startswith("PASS")]
    return "; ".join(fails) or "gate.passed is false"


def promote(root: Path, name: str, version: str, *, why: str = "", who: str | None = None) -> HistoryRecord | None:
    """Make ``name/version`` LATEST and record it; None when it already is LATEST (nothing written).

    Raises RegistryError for an unknown name or version (naming what exists) or a version whose
    manifest or files are invalid, and GateRefused for a version that failed its gate.
    """
    with model_lock(root, name):
        check_known(root, name, version)
        manifest, _ = load_version(root, name, version)  # manifest valid, checksums match
        if not manifest.gate.passed:
            raise GateRefused(f"{name}/{version} failed its gate and cannot be promoted: {_failed_gate_reasons(manifest)}")
        if latest_version(root, name) == version:
            return None
        return _move_latest(root, name, version, action="promote", why=why, who=who)


def _servable(root: Path, name: str, version: str) -> bool:
    try:
        manifest, _ = load_version(root, name, version)
    except RegistryError:
        return False
    return manifest.gate.passed


def _latest_stack(history: list[HistoryRecord]) -> list[str]:
    """The LATEST versions in force, oldest first, after replaying the history.

    publish/import/promote push their target; a rollback pops back down to its target, so
    rolling back twice goes two steps back instead of flipping between two versions.
    """
    stack: list[str] = []
    for r in history:
        if r.action == "rollback":
            while stack and stack[-1] != r.to_version:
                stack.pop()
            if not stack:
                stack.append(r.to_version)
        else:
            # a move from a LATEST the history never recorded (set before the history existed, or by
            # hand) still goes back to it
            if r.from_version and (not stack or stack[-1] != r.from_version):
                stack.append(r.from_version)
            stack.append(r.to_version)
    return stack


def rollback_target(root: Path, name: str) -> tuple[str, str]:
    """(version, how it was chosen) that :func:`rollback` would make LATEST.

    1. From the history: the version that was LATEST before the current one (skipping any that
       is no longer servable), when the history's last LATEST is the current one.
    2. Otherwise (no history, or LATEST was moved outside it): the newest gate-passing version
       created before the current one.
    Raises RegistryError when there is no LATEST or no earlier servable version.
    """
    check_known(root, name)
    current = latest_version(root, name)
    if not current:
        raise RegistryError(f"{name}: nothing to roll back: no {LATEST_FILE} under {root / name}")
    stack = _latest_stack(read_history(root, name))
    if stack and stack[-1] == current:
        for v in reversed(stack[:-1]):
            if v != current and _servable(root, name, v):
                return v, f"history: LATEST before {current}"
    created = {}
    for v in versions_of(root, name):
        try:
            created[v] = Manifest.load(root / name / v / MANIFEST_FILE).created_at
        except Exception:  # unreadable manifest: never a target
            continue
    if current in created:
        older = sorted((v for v in created if created[v] < created[current]), key=lambda v: (created[v], v))
    else:  # the current manifest is unreadable: version ids sort by time
        older = sorted(v for v in created if v < current)
    for v in reversed(older):
        if _servable(root, name, v):
            return v, f"no usable history: newest gate-passing version older than {current}"
    raise RegistryError(f"{name}: no earlier gate-passing version to roll back to from {current} "
                        f"(versions: {', '.join(versions_of(root, name))})")


def rollback(root: Path, name: str, *, why: str = "", who: str | None = None) -> tuple[HistoryRecord, str]:
    """Move LATEST back (see :func:`rollback_target`); returns the record and how the target was chosen."""
    with model_lock(root, name):
        target, how = rollback_target(root, name)
        return _move_latest(root, name, target, action="rollback", why=why, who=who), how


def unique_version(root: Path, name: str) -> str:
    """A new version id (``new_version_id``) that no existing version folder of ``name`` uses."""
    base = new_version_id()
    candidate, n = base, 1
    while (root / name / candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate
