"""Model versions in a running worker: load beside, switch atomically, drain and free, roll out, watch.

A ``ModelEntry`` holds one registry name's loaded versions, the primary (what a request without a
version gets) and an optional ``Rollout`` of a candidate version:

- canary: a share of requests goes to the candidate; the share is decided by a hash of the
  request id, so a client's retry (same id) lands on the same version;
- shadow: a share of requests is also sent to the candidate after the primary has answered; the
  client never waits for it, and the dataplane records whether the two answers agree.

``Lifecycle`` changes entries while the worker serves. Everything that decides which version a
request gets runs on the worker's event loop, so switching the primary is one assignment: requests
that resolved the old version finish on it, later ones get the new one. A new version is loaded
(manifest, checksums, sessions, warm-up) in a thread beside the old one; if it fails, the old one
keeps serving and the failure is reported (``/models``, the model_info metric behind the
``ModelLoadFailed`` alert, one log line). The old version is freed once its queued and in-flight
requests are answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from dataclasses import dataclass, field
from typing import Literal

import anyio

from modelkit.registry import latest_version, model_names

from . import telemetry
from .batcher import Traffic
from .desired_state import DesiredState, default_folder
from .errors import ServiceError
from .models import ServedModel, load_model, wanted_version
from .settings import ServiceSettings

log = logging.getLogger("service.lifecycle")

RolloutMode = Literal["canary", "shadow"]


def request_bucket(model: str, request_id: str) -> float:
    """A request id's place in [0, 1) for ``model``: the same id always gets the same place."""
    digest = hashlib.blake2b(f"{model}\0{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class Rollout:
    candidate: str  # version
    mode: RolloutMode
    share: float  # canary: share of requests routed to the candidate; shadow: share mirrored to it


@dataclass(eq=False)
class ModelEntry:
    """One model name in a worker: loaded versions, the primary, an optional rollout."""

    name: str
    versions: dict[str, ServedModel] = field(default_factory=dict)
    primary: str | None = None
    rollout: Rollout | None = None
    failure: ServedModel | None = None  # the newest version that failed to load (kept for /models)
    seen_latest: str | None = None  # the registry's LATEST when last looked at (the watch acts when it moves)
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)  # one change at a time per name

    @property
    def current(self) -> ServedModel | None:
        """The primary version, or the failure when nothing else serves."""
        if self.primary is not None and self.primary in self.versions:
            return self.versions[self.primary]
        return self.failure

    @property
    def ready(self) -> bool:
        m = self.current
        return m is not None and m.status == "ready"

    @property
    def unloaded(self) -> bool:
        return not self.versions and self.failure is None

    def candidate(self) -> ServedModel | None:
        if self.rollout is None:
            return None
        m = self.versions.get(self.rollout.candidate)
        return m if m is not None and m.status == "ready" else None

    def pick(self, request_id: str | None) -> tuple[ServedModel | None, str]:
        """(version, route) for a request that names no version: route is primary or canary."""
        candidate = self.candidate()
        if candidate is not None and self.rollout.mode == "canary":
            if self._bucket(request_id) < self.rollout.share:
                return candidate, "canary"
        return self.current, "primary"

    def shadow_of(self, served: ServedModel, route: str, request_id: str | None) -> ServedModel | None:
        """The candidate that also gets this request (shadow rollout), or None."""
        candidate = self.candidate()
        if candidate is None or self.rollout.mode != "shadow" or route != "primary" or candidate is served:
            return None
        return candidate if self._bucket(request_id) < self.rollout.share else None

    def _bucket(self, request_id: str | None) -> float:
        # a request without an id gets a random place: the share still holds, a retry may land elsewhere
        return request_bucket(self.name, request_id) if request_id else random.random()

    def role(self, version: str) -> str:
        if version == self.primary:
            return "primary"
        if self.rollout is not None and version == self.rollout.candidate:
            return self.rollout.mode
        return "loaded"

    def desired(self) -> dict:
        r = self.rollout
        return {"primary": self.primary, "loaded": not self.unloaded,
                "rollout": {"candidate": r.candidate, "mode": r.mode, "share": r.share} if r else None}


def publish(entry: ModelEntry) -> None:
    """The entry's rollout roles as metrics (modelserve_rollout_info, modelserve_rollout_share)."""
    r = entry.rollout
    telemetry.record_rollout(entry.name, entry.primary, r.candidate if r else None, r.mode if r else None,
                             r.share if r else 0.0)


class Lifecycle:
    """Loads, switches, rolls out and frees model versions of one worker; watches the registry."""

    def __init__(self, settings: ServiceSettings, models: dict[str, ModelEntry], traffic: Traffic,
                 board: DesiredState | None = None):
        self.settings = settings
        self.models = models
        self.traffic = traffic
        self.board = board or DesiredState(settings.state_dir or default_folder())
        self.applied: dict[str, int] = {}  # desired-state sequence numbers already applied, per model
        self._tasks: list[asyncio.Task] = []
        self._retiring: set[asyncio.Task] = set()

    # ---- start-up (blocking, before the worker serves) ----------------------------------------

    def load_initial(self) -> None:
        """Every model to serve at start, loaded and warmed up (or failed with its reason)."""
        names = self._names()
        if not names:
            log.warning("no models found under %s (no <name>/LATEST)", self.settings.registry.resolve())
        for name in names:
            entry = self.models.setdefault(name, ModelEntry(name))
            entry.seen_latest = _latest(self.settings, name)
            model = load_model(self.settings, name, wanted_version(self.settings, name), self.traffic)
            if model.status == "ready":
                entry.versions[model.version] = model
                entry.primary = model.version
            else:
                entry.failure = model
        for name, rollout in self.settings.rollouts.items():
            entry = self.models.get(name)
            if entry is None:
                log.error("rollout for %s ignored: the model is not served", name)
                continue
            model = load_model(self.settings, name, rollout.candidate, self.traffic)
            if model.status == "ready":
                entry.versions[model.version] = model
                entry.rollout = Rollout(model.version, rollout.mode, rollout.share)
            else:
                entry.failure = model
        for entry in self.models.values():
            publish(entry)

    def _names(self) -> list[str]:
        if self.settings.models is not None:
            return list(self.settings.models)
        return sorted(set(model_names(self.settings.registry)) | set(self.settings.pins))

    # ---- changes while serving ----------------------------------------------------------------

    async def load(self, name: str, version: str | None = None, *, role: str = "primary",
                   mode: RolloutMode = "canary", share: float = 0.1, record: bool = True) -> ServedModel:
        """Load ``version`` of ``name`` (default: its pin or LATEST) beside what serves, then make it the
        primary (``role="primary"``) or the rollout candidate (``role="candidate"``).

        Raises ServiceError 404 when the model or version is not in the registry, 422 when it fails to
        load (what served before keeps serving either way). ``record`` shares the change with the
        server's other workers.
        """
        entry = self.models.get(name)
        if entry is None:
            if name not in self._names():
                raise ServiceError(404, f"model {name!r} is not in the registry (no {name}/LATEST)", field="name",
                                   limit=self._names())
            entry = self.models.setdefault(name, ModelEntry(name, seen_latest=_latest(self.settings, name)))
        async with entry.busy:
            if version is None:
                version = wanted_version(self.settings, name)
                if version is None:
                    raise ServiceError(404, f"model {name!r} has no LATEST version", field="version")
            model = entry.versions.get(version)
            if model is None:
                model = await anyio.to_thread.run_sync(load_model, self.settings, name, version, self.traffic)
                if model.status != "ready":
                    entry.failure = model
                    status = 404 if "not found" in (model.reason or "").lower() else 422
                    raise ServiceError(status, f"model {name!r} version {version!r} failed to load: {model.reason}",
                                       field="version", limit=None, kind="model_failure", reason=model.reason)
                entry.versions[version] = model
            if role == "candidate":
                if version == entry.primary:
                    raise ServiceError(422, f"version {version!r} is already the primary of {name!r}",
                                       field="version")
                previous = entry.rollout.candidate if entry.rollout else None
                entry.rollout = Rollout(version, mode, share)
                log.info("model %s: version %s is the %s candidate (share %.2f)", name, version, mode, share)
                if previous and previous != version:
                    self._retire(entry, previous)
            else:
                previous = entry.primary
                entry.primary = version  # the switch: one assignment on the event loop
                entry.failure = None
                if entry.rollout is not None and entry.rollout.candidate == version:
                    entry.rollout = None  # the candidate was promoted
                if previous != version:
                    log.info("model %s: version %s is the primary (was %s)", name, version, previous)
                if previous and previous != version:
                    self._retire(entry, previous)
            publish(entry)
            if record:
                self._record(entry)
            return model

    async def unload(self, name: str, version: str | None = None, *, record: bool = True) -> list[str]:
        """Stop serving ``version`` of ``name`` (default: every version); returns the versions unloaded."""
        entry = self.models.get(name)
        if entry is None or entry.unloaded:
            raise ServiceError(404, f"model {name!r} is not loaded", field="name",
                               limit=sorted(n for n, e in self.models.items() if not e.unloaded))
        async with entry.busy:
            versions = [version] if version else list(entry.versions)
            missing = [v for v in versions if v not in entry.versions]
            if missing:
                raise ServiceError(404, f"model {name!r} has no version {missing[0]!r} loaded", field="version",
                                   limit=sorted(entry.versions))
            for v in versions:
                if entry.rollout is not None and entry.rollout.candidate == v:
                    entry.rollout = None
                if entry.primary == v:
                    entry.primary = None
                self._retire(entry, v)
            if not version:
                entry.failure = None
            publish(entry)
            if record:
                self._record(entry)
            return versions

    def _retire(self, entry: ModelEntry, version: str) -> None:
        model = entry.versions.pop(version, None)
        if model is None:
            return
        task = asyncio.get_running_loop().create_task(model.retire(self.settings.drain_timeout_s))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def settle(self) -> None:
        """Wait for every version being retired to be freed (tests, shutdown)."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    # ---- the server's other workers -------------------------------------------------------------

    def _record(self, entry: ModelEntry) -> None:
        seq = self.board.write(entry.name, entry.desired())
        if seq:
            self.applied[entry.name] = seq

    async def sync_once(self) -> None:
        """Apply the desired states other workers recorded since the last sync."""
        for name, state in self.board.newer(self.applied):
            self.applied[name] = state["seq"]
            entry = self.models.get(name)
            try:
                if not state["loaded"]:
                    if entry is not None and not entry.unloaded:
                        await self.unload(name, record=False)
                    continue
                if state["primary"] and (entry is None or entry.primary != state["primary"]):
                    await self.load(name, state["primary"], record=False)
                entry = self.models[name]
                rollout = state["rollout"]
                if rollout is None and entry.rollout is not None:
                    await self.unload(name, entry.rollout.candidate, record=False)
                elif rollout is not None:
                    await self.load(name, rollout["candidate"], role="candidate", mode=rollout["mode"],
                                    share=rollout["share"], record=False)
            except ServiceError as err:
                log.error("model %s: could not apply the state another worker recorded: %s", name, err.message)

    # ---- background: registry watch and worker sync ---------------------------------------------

    def start(self) -> None:
        """On the worker's event loop: the registry watch (SERVICE_RELOAD=poll) and the desired-state sync."""
        loop = asyncio.get_running_loop()
        if self.settings.reload == "poll":
            self._tasks.append(loop.create_task(self._every(self.settings.reload_interval_s, self.poll_once),
                                                name="registry-watch"))
            log.info("watching %s for new versions every %.1f s", self.settings.registry.resolve(),
                     self.settings.reload_interval_s)
        if self.board.folder is not None:
            self._tasks.append(loop.create_task(self._every(self.settings.state_sync_s, self.sync_once),
                                                name="state-sync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    @staticmethod
    async def _every(seconds: float, job) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:  # a bad registry state must not end the loop
                log.exception("%s failed", getattr(job, "__name__", job))

    async def poll_once(self) -> list[tuple[str, str]]:
        """Load the version a moved LATEST names, and every new model; returns the (name, version) switched to."""
        switched = []
        for name in self._names():
            if name in self.settings.pins:
                continue
            latest = _latest(self.settings, name)
            entry = self.models.get(name)
            if latest is None or (entry is not None and latest == entry.seen_latest):
                continue
            if entry is not None:
                entry.seen_latest = latest
            try:
                await self.load(name, latest, record=False)
                switched.append((name, latest))
            except ServiceError as err:
                log.error("model %s: new version %s not served, keeping %s: %s", name, latest,
                          entry.primary if entry else None, err.message)
        return switched


def _latest(settings: ServiceSettings, name: str) -> str | None:
    try:
        return latest_version(settings.registry, name)
    except Exception:
        return None
