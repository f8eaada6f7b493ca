"""API keys: who may call the service, with which scopes, on which models.

Keys live in a JSON file (or the same JSON in ``SERVICE_AUTH__KEYS``) as sha256 hashes, never
in clear::

    {"keys": [{"name": "team-a", "sha256": "<hex>", "scopes": ["infer"], "models": ["sentiment"],
               "rate": 20, "burst": 40}]}

A key is ``msk_`` plus 32 random bytes (256 bits), so a plain sha256 is enough: nobody can guess
a preimage, and hashing costs about a microsecond per request (scrypt or argon2 exist to slow
down guessing of low-entropy passwords, and would cost milliseconds of CPU on every request).
A presented key's hash is compared with every stored hash with ``hmac.compare_digest``, so the
time taken does not depend on where (or whether) it matched. Keys are never logged or echoed;
errors name the key entry (``name``) at most.

Scopes: ``infer`` (every door's inference and metadata), ``admin`` (the repository API).
``models`` (optional) restricts inference to those names. ``rate``/``burst`` (optional) override
the service's rate limit for that key.

Make a key: ``python -m service.auth new --name team-a --scopes infer [--models a,b]`` prints the
key (give it to the client) and the entry to add to the key file.
"""

from __future__ import annotations

import argparse
import contextvars
import hashlib
import hmac
import json
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ServiceError

SCOPES = ("infer", "admin")
KEY_PREFIX = "msk_"
REALM = 'Bearer realm="modelserve"'
HEADERS_KEY = "modelserve.headers"  # scope key: the request headers as a dict (http_headers)


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[str] = Field(min_length=1)
    models: list[str] | None = None
    rate: float | None = Field(None, ge=0)
    burst: float | None = Field(None, ge=0)

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, scopes: list[str]) -> list[str]:
        unknown = set(scopes) - set(SCOPES)
        if unknown:
            raise ValueError(f"unknown scope {sorted(unknown)[0]!r} (scopes: {', '.join(SCOPES)})")
        return scopes


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry]


@dataclass(frozen=True)
class Identity:
    """The caller a valid key stands for."""

    name: str
    scopes: frozenset[str]
    models: frozenset[str] | None
    rate: float | None = None
    burst: float | None = None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


# the caller of the request being handled (None: auth off); set by the doors, read by check_model
current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("modelserve_identity", default=None)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Auth:
    """The key table of one worker."""

    def __init__(self, entries: Iterable[KeyEntry]):
        self._entries = [(bytes.fromhex(e.sha256), e) for e in entries]
        names = [e.name for _, e in self._entries]
        if len(set(names)) != len(names):
            raise ValueError("key names must be unique")
        if not self._entries:
            raise ValueError("auth is enabled but the key file holds no key")

    @classmethod
    def from_settings(cls, settings) -> Auth | None:
        """The key table (``settings`` is ``AuthSettings``), or None when auth is off; a bad key file fails start-up."""
        if not settings.enabled:
            return None
        if settings.keys is not None:
            text, source = settings.keys, "SERVICE_AUTH__KEYS"
        elif settings.keys_file is not None:
            text, source = Path(settings.keys_file).read_text(encoding="utf-8"), str(settings.keys_file)
        else:
            raise ValueError("auth is enabled: set SERVICE_AUTH__KEYS_FILE (or SERVICE_AUTH__KEYS)")
        try:
            return cls(KeyFile.model_validate_json(text).keys)
        except ValidationError as exc:
            # the message names fields, never values (the file holds hashes, still not for logs)
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
            raise ValueError(f"invalid key file {source}: {where}") from None

    def identify(self, presented: str) -> Identity | None:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for stored, entry in self._entries:  # every entry, no early exit
            if hmac.compare_digest(stored, digest):
                found = entry
        if found is None:
            return None
        return Identity(found.name, frozenset(found.scopes), frozenset(found.models) if found.models else None,
                        found.rate, found.burst)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key of ``Authorization: Bearer <key>`` or ``x-api-key`` (header names in lower case)."""
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    value = headers.get("x-api-key")
    return value.strip() if value and value.strip() else None


def require(auth: Auth | None, headers: Mapping[str, str], scope: str = "infer",
            model: str | None = None) -> Identity | None:
    """The caller's identity when its key is valid and holds ``scope`` (and may use ``model``).

    401 without a valid key, 403 with a key lacking the scope or the model; None when auth is off.
    ``headers``: request headers with lower-case names (HTTP) or gRPC invocation metadata as a dict.
    Also what the admin repository API calls: ``require(auth, headers, scope="admin")``.
    """
    if auth is None:
        return None
    key = presented_key(headers)
    if key is None:
        raise ServiceError(401, "an API key is required: send Authorization: Bearer <key> or x-api-key",
                           field="authorization", headers={"WWW-Authenticate": REALM})
    identity = auth.identify(key)
    if identity is None:
        raise ServiceError(401, "the API key is not valid", field="authorization",
                           headers={"WWW-Authenticate": REALM})
    if scope not in identity.scopes:
        raise ServiceError(403, f"key {identity.name!r} lacks the {scope!r} scope", field="authorization",
                           limit=sorted(identity.scopes))
    if model is not None:
        check_model(model, identity)
    return identity


def check_model(model: str, identity: Identity | None = None) -> None:
    """403 when the request's caller (``current`` by default) may not use ``model``."""
    identity = identity if identity is not None else current.get()
    if identity is not None and not identity.may_use(model):
        raise ServiceError(403, f"key {identity.name!r} may not use model {model!r}", field="model",
                           limit=sorted(identity.models or ()))


def http_headers(scope) -> dict[str, str]:
    """An ASGI scope's headers as a dict with lower-case names (the first of repeated headers wins); made
    once per request and kept in the scope, for the front's checks and the doors alike."""
    out = scope.get(HEADERS_KEY)
    if out is None:
        out = scope[HEADERS_KEY] = {}
        for name, value in scope["headers"]:
            out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


# ---- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.auth", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="make a key: prints the key, then its key-file entry (JSON)")
    new.add_argument("--name", required=True)
    new.add_argument("--scopes", default="infer", help="comma-separated: infer, admin")
    new.add_argument("--models", default=None, help="comma-separated model names (default: every model)")
    new.add_argument("--rate", type=float, default=None)
    new.add_argument("--burst", type=float, default=None)
    sub.add_parser("hash", help="the sha256 entry of a key read from stdin")
    check = sub.add_parser("check", help="validate a key file")
    check.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "hash":
        print(hash_key(sys.stdin.readline().strip()))
        return 0
    if args.command == "check":
        from .settings import AuthSettings

        try:
            Auth.from_settings(AuthSettings(enabled=True, keys_file=args.file))
        except (ValueError, OSError) as exc:
            print(exc, file=sys.stderr)
            return 2
        print("ok")
        return 0
    key = new_key()
    entry = {"name": args.name, "sha256": hash_key(key), "scopes": [s for s in args.scopes.split(",") if s]}
    if args.models:
        entry["models"] = [m for m in args.models.split(",") if m]
    for field in ("rate", "burst"):
        if getattr(args, field) is not None:
            entry[field] = getattr(args, field)
    try:
        KeyEntry.model_validate(entry)
    except (ValidationError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(key)
    print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
