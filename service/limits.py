"""Rate limits: a token bucket per API key (per client address when auth is off), shared by the workers.

Why shared: the HTTP listening socket is made once by BentoML's arbiter (circus) and inherited by
every worker, so whichever worker's ``accept`` wins takes a new connection (on an idle machine
mostly the same one); the gRPC door binds one socket per worker with SO_REUSEPORT and the kernel
spreads connections by a hash of their addresses. Either way connections, not requests, are
spread, and unevenly: a per-worker share of the limit (rate/W in each) admitted 7 of an expected
11 requests in a first trial with 2 workers. So the buckets live in one small memory-mapped file
that every worker of one ``bentoml serve`` opens (in its Prometheus multiprocess directory,
which BentoML creates for each start and wipes), updated under an ``flock``: a few microseconds
per request, exact across workers, and no extra service. It is per host: several replicas
each admit the full rate (divide it by the replica count, or put a shared store in front).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import time
from pathlib import Path

from .errors import ServiceError

_SLOT = struct.Struct("<16sdd")  # caller digest, tokens, last refill (time.monotonic(): one clock per host)
_PROBE = 8  # slots looked at per caller (open addressing); the stalest of them is reused when all are taken
_EMPTY = bytes(16)


def table_path() -> Path:
    """The bucket file of this ``bentoml serve``: in its Prometheus multiprocess directory (one per start,
    shared by its workers), else per parent process in the temp directory."""
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if shared and os.path.isdir(shared):
        return Path(shared) / "modelserve-rate-limits.bin"
    return Path(tempfile.gettempdir()) / f"modelserve-rate-limits-{os.getppid()}.bin"


def take(tokens: float, stamp: float, now: float, rate: float, burst: float) -> tuple[float, float, float]:
    """One token bucket step: (tokens left, new stamp, seconds to wait: 0 when the request may go)."""
    tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, now, 0.0
    return tokens, now, (1.0 - tokens) / rate


class RateLimiter:
    """``admit(who, rate, burst)``: 429 with Retry-After once ``who`` used its bucket (rate per second, burst)."""

    def __init__(self, rate: float, burst: float, slots: int = 10_000, path: Path | None = None,
                 clock=time.monotonic):
        self.rate = rate
        self.burst = burst
        self.slots = max(slots, _PROBE)
        self._clock = clock
        self._path = path
        self._map: mmap.mmap | None = None
        self._fd: int | None = None

    @classmethod
    def from_settings(cls, settings) -> RateLimiter:
        """``settings`` is ``RateLimitSettings``; with rate 0 only keys with their own rate are limited."""
        return cls(settings.rate, settings.burst, settings.max_clients)

    def limits(self, rate: float | None, burst: float | None) -> tuple[float, float]:
        rate = self.rate if rate is None else rate
        burst = self.burst if burst is None else burst
        return rate, burst or max(rate, 1.0)

    def _open(self) -> mmap.mmap:
        if self._map is None:
            path = self._path or table_path()
            size = self.slots * _SLOT.size
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)  # zero-filled: every slot empty
                self.slots = os.fstat(fd).st_size // _SLOT.size  # another worker may have made it larger
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._fd, self._map = fd, mmap.mmap(fd, self.slots * _SLOT.size)
        return self._map

    def admit(self, who: str, rate: float | None = None, burst: float | None = None) -> None:
        rate, burst = self.limits(rate, burst)
        if rate <= 0:
            return
        wait = self._take(hashlib.blake2b(who.encode("utf-8", "surrogateescape"), digest_size=16).digest(),
                          rate, burst)
        if wait > 0:
            raise ServiceError(429, f"rate limit: {rate:g} requests/s, burst {burst:g}", field=None, limit=rate,
                               retry_after=wait)

    def _take(self, digest: bytes, rate: float, burst: float) -> float:
        table = self._open()
        start = int.from_bytes(digest[:8], "little") % self.slots
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = self._clock()
            slot, stalest, stalest_stamp = None, None, float("inf")
            for i in range(_PROBE):
                index = (start + i) % self.slots
                key, tokens, stamp = _SLOT.unpack_from(table, index * _SLOT.size)
                if key == digest:
                    slot = index
                    break
                if key == _EMPTY:
                    slot, tokens, stamp = index, burst, now
                    break
                if stamp < stalest_stamp:
                    stalest, stalest_stamp = index, stamp
            else:  # every probed slot holds another caller: take over the one idle longest
                slot, tokens, stamp = stalest, burst, now
            tokens, stamp, wait = take(tokens, stamp, now, rate, burst)
            _SLOT.pack_into(table, slot * _SLOT.size, digest, tokens, stamp)
            return wait
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            os.close(self._fd)
            self._map = self._fd = None
