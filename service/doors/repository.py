"""The model repository extension of the Open Inference Protocol (as Triton and MLServer have it).

``POST /v2/repository/index`` lists every model of the registry and every loaded version;
``POST /v2/repository/models/{name}/load`` loads a version (default: LATEST) and makes it the
primary, or, with ``{"parameters": {"role": "candidate", "mode": "canary"|"shadow", "share": 0.1}}``,
the rollout candidate; ``.../unload`` stops serving the model (or one version). Every call needs the
admin token (``Authorization: Bearer``); the token is compared in constant time and never logged.
A change reaches the server's other workers through ``service.desired_state``.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from modelkit.registry import model_names

from .. import auth
from ..errors import ServiceError
from ..worker import Worker
from .responses import json_response

LOAD_PARAMETERS = {"version", "role", "mode", "share"}
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")



def require_admin(worker: Worker, request: Request) -> None:
    """401 unless the request carries the admin token, or (API keys on) the front admitted a key with the
    ``admin`` scope (service/auth.py)."""
    identity = auth.current.get()
    if identity is not None and "admin" in identity.scopes:
        return
    token = worker.settings.admin_token
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if token is None:
        raise ServiceError(401, "the repository API is off: set SERVICE_ADMIN_TOKEN to use it", field="authorization")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.get_secret_value().encode()):
        raise ServiceError(401, "missing or wrong admin token (Authorization: Bearer ...)", field="authorization")


async def _parameters(request: Request, allowed: set[str]) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ServiceError(400, f"request body is not valid JSON: {str(exc)[:200]}", field="body") from None
    params = doc.get("parameters", {}) if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise ServiceError(422, "body must be {\"parameters\": {...}}", field="parameters")
    unknown = set(params) - allowed
    if unknown:
        raise ServiceError(422, f"unknown parameter {sorted(unknown)[0]!r}", field=f"parameters.{sorted(unknown)[0]}",
                           limit=sorted(allowed))
    return params


async def index(worker: Worker, request: Request) -> Response:
    """Every model of the registry with its versions: state READY / UNAVAILABLE, role, reason."""
    require_admin(worker, request)
    rows = []
    root = worker.settings.registry
    names = sorted(set(model_names(root)) | set(worker.models))
    for name in names:
        entry = worker.models.get(name)
        loaded = entry.versions if entry is not None else {}
        for version, model in sorted(loaded.items()):
            rows.append({"name": name, "version": version, "state": "READY" if model.status == "ready" else
                         "UNAVAILABLE", "role": entry.role(version), "reason": ""})
        if entry is not None and entry.failure is not None:
            rows.append({"name": name, "version": entry.failure.version, "state": "UNAVAILABLE", "role": "failed",
                         "reason": entry.failure.reason or ""})
        if not loaded and (entry is None or entry.failure is None):
            rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "role": "",
                         "reason": "unloaded" if entry is not None else "not loaded"})
    return json_response(rows)


def _check_name(value: Any, field: str) -> None:
    """Names and versions are folder names of the registry: nothing that could leave it."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value) or value in (".", ".."):
        raise ServiceError(422, f"{field} must be a registry folder name ([A-Za-z0-9._-]), got {value!r}"[:300],
                           field=field, limit="[A-Za-z0-9._-]+")


async def load(worker: Worker, request: Request, name: str) -> Response:
    require_admin(worker, request)
    _check_name(name, "name")
    request.model_name = name
    params = await _parameters(request, LOAD_PARAMETERS)
    role = params.get("role", "primary")
    if role not in ("primary", "candidate"):
        raise ServiceError(422, f"role must be primary or candidate, got {role!r}", field="parameters.role",
                           limit=["primary", "candidate"])
    mode = params.get("mode", "canary")
    if mode not in ("canary", "shadow"):
        raise ServiceError(422, f"mode must be canary or shadow, got {mode!r}", field="parameters.mode",
                           limit=["canary", "shadow"])
    share = params.get("share", 0.1)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ServiceError(422, f"share must be a number from 0 to 1, got {share!r}", field="parameters.share",
                           limit=[0, 1])
    version = params.get("version")
    if version is not None:
        _check_name(version, "parameters.version")
    model = await worker.lifecycle.load(name, version, role=role, mode=mode, share=float(share))
    return json_response({"name": name, "version": model.version, "role": role if role == "primary" else mode})


async def unload(worker: Worker, request: Request, name: str) -> Response:
    require_admin(worker, request)
    request.model_name = name
    params = await _parameters(request, {"version"})
    if params.get("version") is not None:
        _check_name(params["version"], "parameters.version")
    versions = await worker.lifecycle.unload(name, params.get("version"))
    return json_response({"name": name, "unloaded": versions})


def route(method: str, parts: list[str]):
    """(endpoint label, handler, path parameters) for /v2/repository/... paths (``parts`` after "repository")."""
    if method != "POST":
        return None
    if parts == ["index"]:
        return "/v2/repository/index", index, {}
    if len(parts) == 3 and parts[0] == "models" and parts[1] and parts[2] in ("load", "unload"):
        return f"/v2/repository/models/{{name}}/{parts[2]}", load if parts[2] == "load" else unload, {"name": parts[1]}
    return None
