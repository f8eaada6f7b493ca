"""One worker's request protection: API keys, rate limits, deadlines and the SIGTERM drain.

Built once per worker from the settings (a bad key file stops start-up) and handed to the HTTP
front and the gRPC door, which call ``admit`` before a request reaches its handler.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import auth
from .deadlines import Deadlines
from .drain import Drain
from .limits import RateLimiter
from .settings import ServiceSettings

# paths and RPCs open without a key: the probes
OPEN_HTTP = frozenset({"/livez", "/readyz", "/healthz", "/v2/health/live", "/v2/health/ready"})
OPEN_GRPC = frozenset({"ServerLive", "ServerReady"})
DOCS = frozenset({"/", "/docs", "/docs.json", "/openapi.json", "/schema.json"})


class Guard:
    def __init__(self, settings: ServiceSettings):
        self.auth = auth.Auth.from_settings(settings.auth)
        self.open_metrics = settings.auth.open_metrics
        self.open_docs = settings.auth.open_docs
        self.limits = RateLimiter.from_settings(settings.rate_limit)
        self.deadlines = Deadlines(settings.deadlines)
        self.drain = Drain(min(settings.shutdown_grace_s, settings.drain_seconds), settings.drain_seconds)

    def is_open(self, path: str) -> bool:
        """An HTTP path any caller may reach without a key (and without counting against a rate limit)."""
        return (path in OPEN_HTTP or (path == "/metrics" and self.open_metrics)
                or (path in DOCS and self.open_docs))

    def admit(self, headers: Mapping[str, str], client: str | None, scope: str = "infer") -> auth.Identity | None:
        """401/403 without a fitting key (auth on), 429 over the rate limit; sets ``auth.current``."""
        identity = auth.require(self.auth, headers, scope)
        auth.current.set(identity)
        if identity is not None:
            self.limits.admit(f"key:{identity.name}", identity.rate, identity.burst)
        else:
            self.limits.admit(f"addr:{client or '?'}")
        return identity
