"""Service settings (pydantic-settings): environment ``SERVICE_*``, optionally a TOML file.

Precedence, highest first: environment variables, the TOML file named by
``SERVICE_CONFIG_FILE``, defaults. Nested values use ``__`` in variable names
(``SERVICE_DEFAULT_BATCH__MAX_WAIT_MS=2``) or JSON (``SERVICE_PINS='{"sentiment": "20261123-130501"}'``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from modelkit.onnx_session import ConvAlgoSearch, SessionSettings

CONFIG_FILE_ENV = "SERVICE_CONFIG_FILE"


class BatchSettings(BaseModel):
    """How items from concurrent requests are coalesced for one model."""

    max_batch_size: int = Field(32, ge=1, le=4096, description="most items in one model call")
    max_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="longest an item waits for others while more requests are arriving"
    )
    max_queue_items: int = Field(4096, ge=1, description="items waiting beyond this are refused with 503 (overload)")
    inline_max_ms: float = Field(
        2.0, ge=0, le=100,
        description="a call of <= 4 items whose recent duration is below this runs on the event loop when no other "
        "request is queued or arriving (skips two thread hand-offs); 0 disables",
    )


class DecodingSettings(BaseModel):
    """Continuous batching of a translator's decoding steps (``service/decoding.py``)."""

    mode: Literal["auto", "off"] = Field(
        "auto", description="auto: versions exported with a decoder_step graph decode with continuous batching "
        "(older and imported versions keep the request batcher); off: the request batcher for every version")
    max_rows: int = Field(64, ge=1, le=4096, description="rows in the running batch at most (a beam request takes "
                          "num_beams rows)")
    max_kv_bytes: int = Field(256 * 2**20, ge=1, description="key/value cache bytes of the running batch at most, "
                              "counted as the buffers would be allocated; a request that does not fit waits")
    max_queue_items: int = Field(1024, ge=1, description="texts waiting to join the running batch; more are "
                                 "refused with 503 and a retry_after estimate")
    max_join: int = Field(32, ge=1, description="texts whose encoder pass runs together before the next step")
    join_min: int = Field(4, ge=1, description="while rows are running, fewer waiting texts than this join only once "
                          "the oldest has waited join_wait_steps decoder steps: fewer encoder passes, each about as "
                          "costly as a decoder step (32 in-process clients, de-en quick: 9-12% more sentences/s)")
    join_wait_steps: int = Field(2, ge=0, description="decoder steps a text may wait for join_min (0: join at once)")

    def join_waits(self, running_rows: int, queued: int, oldest_waited_steps: int) -> bool:
        """Whether the ``queued`` texts wait another decoder step for company (join_min / join_wait_steps)."""
        return bool(running_rows) and queued < self.join_min and oldest_waited_steps < self.join_wait_steps


class RolloutSettings(BaseModel):
    """A candidate version served beside the primary (canary: routed a share; shadow: mirrored a share)."""

    candidate: str = Field(description="the candidate's version (a folder of the registry)")
    mode: Literal["canary", "shadow"] = "canary"
    share: float = Field(0.1, ge=0, le=1, description="share of requests routed (canary) or mirrored (shadow)")


class AuthSettings(BaseModel):
    """API keys (service/auth.py). Off by default; on, every door but the probes needs a key."""

    enabled: bool = Field(False, description="require an API key (Authorization: Bearer or x-api-key)")
    keys_file: Path | None = Field(None, description="JSON key file (sha256 hashes, scopes, models), e.g. a "
                                   "mounted Secret; `python -m service.auth new` makes an entry")
    keys: str | None = Field(None, description="the same JSON inline (e.g. SERVICE_AUTH__KEYS from a Secret)")
    open_metrics: bool = Field(True, description="/metrics without a key (a Prometheus scrape inside the cluster)")
    open_docs: bool = Field(True, description="the OpenAPI page (/, /docs.json) without a key")


class RateLimitSettings(BaseModel):
    """Token buckets per API key (per client address when auth is off), in requests per second, shared by
    the workers of one ``bentoml serve`` (service/limits.py); each replica admits the full rate."""

    rate: float = Field(0.0, ge=0, description="requests/s per key or client address; 0 = no limit")
    burst: float = Field(0.0, ge=0, description="bucket size (requests at once); 0 = max(rate, 1)")
    max_clients: int = Field(10_000, ge=8, description="bucket slots (32 bytes each); a full table reuses the "
                             "slot idle longest")


class DeadlineSettings(BaseModel):
    """How long a request may take (service/deadlines.py): the client's timeout, else the endpoint's default."""

    default_s: float = Field(10.0, gt=0, description="deadline of a request that names none")
    endpoints: dict[str, float] = Field(
        default_factory=lambda: {"/translate": 20.0},
        description="per-endpoint defaults by endpoint label: /classify, /translate, /classify_image, "
        "/v2/models/{name}/infer, ModelInfer (gRPC), ...",
    )
    max_s: float = Field(120.0, gt=0, description="longest deadline a client may ask for")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVICE_", env_nested_delimiter="__", extra="ignore")

    registry: Path = Field(
        Path("exported"),
        validation_alias=AliasChoices("MODEL_REGISTRY", "SERVICE_REGISTRY", "registry"),
        description="registry root holding <name>/LATEST and <name>/<version>/",
    )
    models: list[str] | None = Field(None, description="serve only these names (default: every name with LATEST)")
    pins: dict[str, str] = Field(default_factory=dict, description="name -> version to serve instead of LATEST")

    provider: Literal["auto", "cuda", "cpu"] = "auto"
    variant: Literal["auto", "fp32", "int8"] = "fp32"
    workers: int = Field(1, ge=1, le=64, description="BentoML worker processes")
    threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads per worker; 0 = cores // workers - 1 (at least 1)"
    )
    cuda_conv_algo_search: ConvAlgoSearch = Field(
        "HEURISTIC", description="how the CUDA provider picks cuDNN convolution algorithms per input shape "
        "(onnxruntime's own default, EXHAUSTIVE, times them all at every new batch size)",
    )

    gil_switch_interval_ms: float = Field(
        0.03, gt=0, le=100,
        description="Python's thread switch interval (sys.setswitchinterval): how long a model thread coming "
        "back from onnxruntime may wait for the event loop to hand over the GIL. Python's 5 ms default "
        "stalls every batch behind a busy event loop; 0.03 ms against 0.1 gave the translator's decode thread "
        "1.06x the sentences/s at 32 clients and the classifiers 0.93x-1.16x, median 1.04x (benchmarks/RESULTS.md)",
    )

    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="each worker's event loop. BentoML leaves uvicorn on 'auto' (uvloop where installed); "
        "uvloop runs libuv without the GIL and takes it back for every callback, each time a chance for the "
        "model thread to hold it first. On 2 cores the stdlib loop gave the fashion classifier 1.13x / 1.10x the "
        "items/s (JSON / OIP REST; sentiment 1.01x / 1.05x) and the translator 1.08x the sentences/s at 32 "
        "clients, servers side by side (benchmarks/RESULTS.md)",
    )

    gc_thresholds: tuple[int, int, int] = Field(
        (20_000, 20, 50),
        description="gc.set_threshold after the models are loaded and frozen (gc.freeze); Python's default "
        "(700, 10, 10) collects every few hundred allocations, and requests allocate thousands",
    )

    default_batch: BatchSettings = Field(default_factory=BatchSettings)
    batch: dict[str, BatchSettings] = Field(default_factory=dict, description="per-model overrides of default_batch")
    default_decoding: DecodingSettings = Field(default_factory=DecodingSettings)
    decoding: dict[str, DecodingSettings] = Field(default_factory=dict,
                                                  description="per-model overrides of default_decoding")

    max_items_per_request: int = Field(64, ge=1, description="texts/images in one request; more is 413")
    max_request_bytes: int = Field(32_000_000, ge=1024, description="request body size; more is 413")
    warmup: bool = True
    access_log: bool = Field(False, description="BentoML per-request access log lines (costs CPU per request)")
    tracing: bool = Field(False, description="OpenTelemetry spans per request (BentoML); off saves CPU per request")
    bentoml_metrics: bool = Field(
        False,
        description="BentoML's own bentoml_service_* request metrics (its middleware costs CPU per request; "
        "the modelserve_* metrics cover requests either way, and /metrics is served in both cases)",
    )
    request_timeout_s: float = Field(120.0, gt=0, description="a request whose answer has not started by then "
                                     "gets 504 (BentoML's request timeout; the front keeps it for the doors' routes)")
    metrics_flush_s: float = Field(
        0.5, ge=0, le=60, description="metrics are held in memory and written to the multiprocess files this "
        "often (one write per series instead of one per observation); a scrape sees other workers' values at most "
        "this late; 0 writes every observation at once")

    reload: Literal["off", "poll"] = Field(
        "off", description="watch the registry: poll each model's LATEST (and new models) every reload_interval_s "
        "and switch to a new version without a restart")
    reload_interval_s: float = Field(5.0, gt=0, le=3600, description="seconds between registry polls")
    drain_timeout_s: float = Field(
        60.0, gt=0, description="longest a replaced version waits for its queued and in-flight requests before "
        "it is freed")
    rollouts: dict[str, RolloutSettings] = Field(
        default_factory=dict, description='per model, a candidate version: {"name": {"candidate": "VERSION", '
        '"mode": "canary"|"shadow", "share": 0.1}}')
    shadow_wait_ms: float = Field(
        20.0, ge=0, le=1000, description="mirrored requests wait this long to share one model call of the shadow "
        "candidate (one call per request costs several times the items' own time: 8 clients, share 0.1, +32% on the "
        "primary's p50; see benchmarks/RESULTS.md)")
    state_dir: Path | None = Field(
        None, description="folder where a worker records repository API changes for the server's other workers "
        "(default: inside BentoML's PROMETHEUS_MULTIPROC_DIR, emptied at every server start)")
    state_sync_s: float = Field(0.5, gt=0, le=60, description="seconds between a worker's checks of that folder")
    admin_token: SecretStr | None = Field(
        None, description="bearer token of the repository API (/v2/repository/...); unset: that API answers 401")

    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    deadlines: DeadlineSettings = Field(default_factory=DeadlineSettings)
    # on SIGTERM (service/drain.py): readiness fails at once, requests are still taken for shutdown_grace_s,
    # then the rest of drain_seconds goes to requests in flight, then the worker exits
    drain_seconds: float = Field(20.0, gt=0, description="longest a worker keeps going after SIGTERM (grace period "
                                 "included) before it cancels what is still running and exits")
    shutdown_grace_s: float = Field(5.0, ge=0, description="after SIGTERM, requests are still taken this long "
                                    "(while load balancers stop sending) before the worker stops accepting")

    grpc: bool = Field(True, description="serve the Open Inference Protocol over gRPC too (every worker)")
    grpc_host: str = Field("0.0.0.0", description="address the gRPC door binds")
    grpc_port: int = Field(8001, ge=1, le=65535, description="port of the gRPC door (shared by the workers)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    def intra_op_threads(self) -> int:
        """Threads per onnxruntime session: each worker's share of the cores, less one for its event loop.

        The event loop (HTTP parsing, validation, JSON) runs beside the model thread; giving
        onnxruntime every core makes its spinning pool threads fight the loop for CPU
        (measured on 2 cores: 1.6 vs 0.95 ms of server CPU per request, benchmarks/RESULTS.md).
        """
        if self.threads:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.workers - 1)

    def session_settings(self) -> SessionSettings:
        return SessionSettings(
            provider=self.provider,
            variant=self.variant,
            intra_op_threads=self.intra_op_threads(),
            inter_op_threads=1,
            cuda_conv_algo_search=self.cuda_conv_algo_search,
        )

    def batch_for(self, name: str) -> BatchSettings:
        return self.batch.get(name, self.default_batch)

    def decoding_for(self, name: str) -> DecodingSettings:
        return self.decoding.get(name, self.default_decoding)
