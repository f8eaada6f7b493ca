"""Request and response bodies (pydantic); their examples show up in the OpenAPI page.

Option bounds (``top_k``, ``num_beams``, ``max_new_tokens``) are checked by the model's task spec
(``service/tasks``), not here: they depend on the model, and one place checks them for every door.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ---- requests -------------------------------------------------------------------------------


VERSION_FIELD = Field(None, description="a version of the model that the service has loaded (default: the primary, "
                      "or the canary candidate for a share of request ids)", examples=[None])


class ClassifyRequest(_Body):
    model: str = Field(description="registered model name (see GET /models)", examples=["sentiment"])
    version: str | None = VERSION_FIELD
    texts: list[str] = Field(
        min_length=1,
        description="texts to classify; at most SERVICE_MAX_ITEMS_PER_REQUEST (413 beyond), "
        "each at most the model's max_text_chars",
        examples=[["what a lovely day", "my flight got cancelled again"]],
    )
    top_k: int | None = Field(
        None, description="labels per text, best first: single-label models default to 1, multi-label ones to every "
        "label at or above its threshold; at most the number of labels", examples=[2], json_schema_extra={"minimum": 1},
    )

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "sentiment", "texts": ["what a lovely day"], "top_k": 2}]}
    )


class TranslateRequest(_Body):
    model: str = Field(description="registered translation model name", examples=["de-en"])
    version: str | None = VERSION_FIELD
    texts: list[str] = Field(min_length=1, description="source sentences", examples=[["Das Haus ist klein."]])
    num_beams: int | None = Field(
        None, description="beam width, from 1 (default from the manifest; at most its max_num_beams)", examples=[4],
        json_schema_extra={"minimum": 1},
    )
    max_new_tokens: int | None = Field(
        None, description="generated tokens per text, from 1 (at most the manifest's max_max_new_tokens)",
        examples=[64], json_schema_extra={"minimum": 1},
    )

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "de-en", "texts": ["Das Haus ist klein."], "num_beams": 2}]}
    )


class ImageJsonRequest(_Body):
    model: str = Field(description="registered image model name", examples=["fashion"])
    version: str | None = VERSION_FIELD
    images: list[str] = Field(min_length=1, description="base64-encoded image files (PNG, JPEG, ...)",
                              json_schema_extra={"items": {"type": "string", "format": "byte"}})
    top_k: int | None = Field(None, description="labels per image, best first (default 1, at most the number of "
                              "labels)", examples=[3], json_schema_extra={"minimum": 1})


# ---- responses ------------------------------------------------------------------------------


class LabelScore(BaseModel):
    label: str
    score: float


class Classification(BaseModel):
    labels: list[LabelScore] = Field(
        description="single-label: top-k labels by probability; multi-label: every label above its threshold"
    )


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": "sentiment",
                    "version": "20261123-130501",
                    "results": [{"labels": [{"label": "positive", "score": 0.91}, {"label": "neutral", "score": 0.06}]}],
                }
            ]
        },
    )
    model: str
    version: str
    results: list[Classification]


class Translation(BaseModel):
    translation: str


class TranslateResponse(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {"model": "de-en", "version": "20261123-130501", "results": [{"translation": "The house is small."}]}
            ]
        },
    )
    model: str
    version: str
    results: list[Translation]


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    name: str
    version: str | None
    task: str | None
    status: Literal["ready", "failed", "unloaded"]
    reason: str | None = Field(None, description="why a failed model could not be loaded")
    labels: list[str] = Field(default_factory=list)
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    headline_metric: str | None = None
    provider: str | None = None
    variant: str | None = None
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    limits: dict[str, Any] = Field(default_factory=dict, description="input limits the service enforces")
    load_seconds: float | None = None
    versions: list[dict[str, Any]] = Field(default_factory=list, description="every loaded version: version, role "
                                           "(primary, canary, shadow, loaded), status, in_flight")
    rollout: dict[str, Any] | None = Field(None, description="the candidate version, mode and share, if any")
    last_load_error: dict[str, Any] | None = Field(
        None, description="a newer version that failed to load while this one kept serving: version, reason")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ErrorDetail(BaseModel):
    status: int
    field: str | None = Field(description="the request field at fault, e.g. texts[3]")
    limit: Any = Field(None, description="the limit it broke, when there is one")
    message: str


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"status": 422, "field": "texts[0]", "limit": 2000, "message": "text is 2500 chars, limit 2000"}}
            ]
        }
    )
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        400: "malformed X-Request-Timeout header",
        401: "API key missing or not valid (when auth is on; WWW-Authenticate: Bearer)",
        403: "the key lacks the infer scope, or may not use this model",
        404: "unknown model (the error lists the known ones)",
        413: "too many items or request body too large",
        415: "wrong content type, or an upload that is not an image",
        422: "invalid field (named in the error, with its limit), wrong task for the endpoint, empty list",
        429: "rate limit of this key (or client address) reached; Retry-After says when to come back",
        503: "model failed to load (reason given), or overloaded: its queue cannot meet the request's deadline "
             "(Retry-After says when it will have drained)",
        504: "the request's deadline (X-Request-Timeout, else the endpoint's default) passed before its answer",
    }.items()
}


# ---- Open Inference Protocol v2 (REST) ----------------------------------------------------------


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64 or BYTES")
    shape: list[int] = Field(description="-1 = any size")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, str] = Field(default_factory=dict, description="task, labels (JSON), task details")


class InferenceTensor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: this tensor's bytes after the JSON header (binary extension)")
    data: list | None = Field(None, description="elements, row-major, flat or nested; BYTES elements as strings")


class RequestedOutputTensor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data (bool): answer this output in binary; classification (int k): the top k "
        "as 'score:index:label' strings (Triton's classification extension)")


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                             "data": ["what a lovely day", "my flight got cancelled again"]}],
                 "outputs": [{"name": "label"}, {"name": "probabilities"}]}
            ]
        }
    )
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="task options (top_k, num_beams, max_new_tokens) and binary_data_output")
    inputs: list[InferenceTensor]
    outputs: list[RequestedOutputTensor] | None = Field(None, description="default: every output of the model")


class InferenceResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferenceTensor]


class OipError(BaseModel):
    error: str = Field(description="what is wrong, naming the field and the limit")


OIP_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": OipError, "description": desc}
    for code, desc in {
        400: "malformed body or binary data, or X-Request-Timeout",
        401: "API key missing or not valid (when auth is on)",
        403: "the key lacks the infer scope, or may not use this model",
        404: "unknown model or version",
        413: "too many items or request body too large",
        422: "an input, output, parameter or item the model cannot take (named in the message, with its limit)",
        429: "rate limit reached; Retry-After",
        503: "model failed to load, or overloaded (Retry-After)",
        504: "the deadline (X-Request-Timeout, the timeout parameter in microseconds) passed",
    }.items()
}
