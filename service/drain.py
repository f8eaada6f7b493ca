"""Graceful drain of one worker on SIGTERM: not ready at once, still serving for a grace period, then stop.

How BentoML 1.4.39 stops: ``bentoml serve`` runs a circus arbiter that owns the HTTP listening
socket; on SIGTERM it sends SIGTERM to every worker and waits for them (its graceful timeout is
a day), then closes the socket and exits. Each worker is a uvicorn server whose SIGTERM handler
(installed with ``signal.signal`` before the app starts) at once closes the listener, closes idle
keep-alive connections and waits for in-flight requests. Left alone, that refuses new connections
the moment the signal lands, while load balancers still send traffic (Kubernetes takes seconds to
take a pod out of its endpoints), and readiness never says 503 first.

What this module does instead, from the worker's startup hook (after uvicorn installed its
handler): it takes over SIGTERM. On the signal, ``draining`` turns true (``/readyz`` and the OIP
ready endpoints say not ready, HTTP answers carry ``Connection: close`` so keep-alive clients
reconnect elsewhere) and requests are still served for ``grace_s``. Then the stop hooks run (the
gRPC door stops taking RPCs and lets running ones finish) and uvicorn's own handler is called
with the rest of ``total_s`` (``SERVICE_DRAIN_SECONDS``) as its graceful-shutdown timeout: the
listener closes, queued and in-flight requests finish (their deadlines bound them), and the
worker exits; what still runs at ``total_s`` is cancelled. A second SIGTERM during the grace
period is ignored; SIGINT (Ctrl+C) still stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

log = logging.getLogger("service.drain")


class Drain:
    """One worker's drain state; ``install`` on its event loop once the server runs."""

    def __init__(self, grace_s: float, total_s: float):
        self.grace_s = grace_s
        self.total_s = total_s
        self.draining = False
        self.since: float | None = None
        self.stopping = False
        self._stop_hooks: list[Callable[[], object]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server_handler = None

    @property
    def timeout_s(self) -> float:
        """Seconds left for requests in flight once the grace period is over."""
        return max(0.1, self.total_s - self.grace_s)

    def on_stop(self, hook: Callable[[], object]) -> None:
        """Call ``hook`` (on the event loop) when the grace period ends; a coroutine it returns is scheduled."""
        self._stop_hooks.append(hook)

    def install(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Take over SIGTERM (main thread only); the server's own handler runs after the grace period."""
        self._loop = loop
        try:
            previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_signal)
        except ValueError:  # not the main thread: leave the server's handling alone
            return False
        self._server_handler = previous
        server = getattr(previous, "__self__", None)
        config = getattr(server, "config", None)
        if config is not None and hasattr(config, "timeout_graceful_shutdown"):
            config.timeout_graceful_shutdown = self.timeout_s  # uvicorn cancels what is still running after this
        return True

    def _on_signal(self, signum, frame) -> None:
        if self.draining:
            return
        self.draining = True
        self.since = time.monotonic()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        log.info("SIGTERM: draining (not ready; serving for %.1f s more, then up to %.1f s for requests in flight)",
                 self.grace_s, self.timeout_s)
        self._loop.call_later(self.grace_s, self.stop)

    def stop(self) -> None:
        """The end of the grace period: stop hooks, then the server's own shutdown."""
        if self.stopping:
            return
        self.stopping = True
        log.info("grace period over: no new connections; finishing requests in flight")
        for hook in self._stop_hooks:
            try:
                result = hook()
                if asyncio.iscoroutine(result):
                    self._loop.create_task(result)
            except Exception:
                log.exception("drain stop hook failed")
        handler = self._server_handler
        if callable(handler):
            handler(signal.SIGTERM, None)
        elif handler == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
