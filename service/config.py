"""Service settings: one pydantic-settings class, read from IMDN_* environment variables and .env."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.animation import MAX_ANIMATION_PIXELS
from model.backends import Backend
from model.imdn import MODEL_NAMES
from model.links import MIN_KEY_CHARS
from model.metadata import DEFAULT_METADATA, MetadataPolicy
from model.plan import DEFAULT_ANY_SCALE, DEFAULT_CONTENT, DEFAULT_MAX_SCALE, AnyScale, Content
from model.structure import MAX_FRAMES

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every knob of the service; validated at start-up. Lists are comma-separated in the environment."""

    model_config = SettingsConfigDict(env_prefix="IMDN_", env_file=".env", extra="ignore")

    # Models and devices
    device: str = Field("auto", description="auto (first GPU, else CPU), cpu, cuda, or a list: cuda:0,cuda:1")
    models: CommaList = Field(default_factory=lambda: list(MODEL_NAMES), description="models to load")
    weights: str = Field("default", description="'default' (bundled), 'official:DIR', or a folder of .safetensors")
    cameras: CommaList = Field(default_factory=list, description="IMDN_AS weights calibrated to a camera (imdn-sr "
                               "calibrate): NAME.safetensors files or folders of them, served as model=as:NAME")
    backend: Backend = Field("auto", description="CPU backend; auto = onnx when installed")
    replicas_per_device: int = Field(1, ge=1, le=16)
    threads: int | None = Field(None, ge=1, description="CPU threads for inference (default: all cores)")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="auto = fp16 on GPU, fp32 on CPU")

    # Tiling and batching
    memory_budget_mb: int = Field(0, ge=0, description="activation memory per tile batch; 0 = by device")
    tile_size: int | None = Field(None, ge=32, description="force a tile core size in input pixels")
    max_batch: int = Field(4, ge=1, le=256, description="tiles per network call, across requests")
    max_wait_ms: float = Field(2.0, ge=0, le=1000, description="how long a batch waits to fill")
    content: Content = Field(
        DEFAULT_CONTENT, description="what model=auto assumes uploads are: 'photo' (IMDN_AS at every scale up to 4, "
        "fine-tuned on real camera pairs) or 'clean' (x2/x3/x4 for exact scales, else IMDN_ANY_SCALE); "
        "a request's content parameter overrides it")
    any_scale: AnyScale = Field(
        DEFAULT_ANY_SCALE, description="non-integer scales up to 4: 'as' (bicubic + IMDN_AS, the paper's way) or "
        "'downscale' (next integer IMDN, then bicubic down; measured better on clean images)")
    refine_stats: bool | None = Field(None, description="tiled images: one more pass for near-exact whole-image "
                                      "statistics (about 2x the compute, and the first byte waits for it): "
                                      "unset = IMDN_AS only (its estimate alone shows seams), true = every model, "
                                      "false = none")

    # Admission
    max_concurrent: int = Field(0, ge=0, description="requests processed at once; 0 = 2 per replica")
    queue_size: int = Field(8, ge=0, description="requests waiting beyond those; more get 429")
    memory_limit_mb: int = Field(0, ge=0, description="memory for requests in each worker, estimated per request "
                                 "from its header; 0 = the container's limit / IMDN_WORKERS less the baseline "
                                 "(docs/configuration.md)")
    rate_limit_pixels: int = Field(0, ge=0, description="output pixels a second per client (API key, else "
                                   "address); 0 = none")
    rate_limit_window_s: float = Field(60.0, gt=0, description="a client may spend this many seconds of its rate "
                                       "at once")
    trusted_proxies: CommaList = Field(default_factory=list, description="addresses or CIDRs of proxies whose "
                                       "X-Forwarded-For names the client (fairness between clients)")
    request_timeout_s: float = Field(300.0, gt=0)
    drain_timeout_s: float = Field(30.0, ge=0, description="after SIGTERM, how long in-flight requests may run; "
                                   "then those not yet streaming get 503 + Retry-After and streams are cut")

    # Uploads (docs/reliability.md): bodies are read before admission, so a slow client holds no slot
    max_uploads: int = Field(32, ge=1, description="request bodies being received at once; more get 429")
    client_grace_s: float = Field(5.0, ge=0, description="slow clients: how long an upload may run before its "
                                  "rate is checked, and how long a download may wait for the client to take 64 KB")
    min_client_rate: int = Field(16384, ge=0, description="bytes/s an upload must average after the grace period "
                                 "(else 408), and a download's pieces must go at (else cut); 0 = no minimum")
    header_timeout_s: float = Field(10.0, gt=0, description="time a client has to send a request's headers")
    max_header_bytes: int = Field(65536, ge=4096, description="request line and headers, in bytes; more: 431 and "
                                  "the connection closed (both parsers)")
    max_headers: int = Field(100, ge=10, description="header fields of a request; more: 431 and the connection closed")
    # Several interpreters per port: upload, decode, PNG and HTTP stop sharing one GIL (docs/deploy.md).
    workers: int = Field(1, ge=1, le=64, description="worker processes on the one port, each with its own replicas")

    # Limits (imgproxy-like defaults)
    max_upload_bytes: int = Field(32 * 2**20, ge=1)
    max_input_pixels: int = Field(16_800_000, ge=1)
    max_output_pixels: int = Field(67_108_864, ge=1)
    max_scale: float = Field(DEFAULT_MAX_SCALE, gt=1, le=16)
    max_jpeg_scans: int = Field(100, ge=1, description="progressive JPEGs with more scans get 422")
    decode_timeout_s: float = Field(30.0, gt=0, description="time an upload may take to decode; longer: 422 (a file "
                                    "that costs more than it may), the decoding stopped")
    max_frames: int = Field(MAX_FRAMES, ge=1, description="animated or multi-page uploads with more frames (pages, "
                            "IFDs) get 422; frames are counted from the file's structure up to this")
    max_animation_pixels: int = Field(MAX_ANIMATION_PIXELS, ge=1, description="an animation's output pixels over "
                                      "all its frames (frames x width x height); more get 413 before decoding. The "
                                      "frames are held until written: a peak of 10-14 bytes per pixel")

    # Output
    png_compress_level: int = Field(1, ge=0, le=9,
                                    description="deflate level for streamed PNGs: 0 stored, 1-3 ISA-L, 4-9 zlib")
    # Well under the 60 s idle timeout of common load balancers (AWS ALB, nginx's proxy_read_timeout).
    stream_heartbeat_s: float = Field(5.0, gt=0, le=55, description="a streamed PNG's first bytes leave after at "
                                      "most this long, then no gap this long passes: a few bytes that change no "
                                      "pixel while the next band computes")

    metadata: MetadataPolicy = Field(DEFAULT_METADATA, description="EXIF/XMP/IPTC in outputs unless a request's "
                                     "metadata says: keep, nogps (all but location), strip (ICC profile only)")

    # HTTP
    # Above common load-balancer idle timeouts (60 s on AWS ALB and ingress-nginx upstreams): the balancer,
    # not the server, must close an idle connection, or it reuses one the server already closed (502).
    keepalive_s: int = Field(75, ge=1, le=3600, description="idle keep-alive timeout of a client connection")
    metrics_port: int = Field(0, ge=0, le=65535, description="serve /metrics on this port only; 0 = the API port")
    docs: bool = Field(True, description="serve /docs and /openapi.json (assets from the installed packages)")
    cors_origins: CommaList = Field(default_factory=list, description="web origins allowed to call the API "
                                    "from a browser (CORS); other origins' POSTs get 403")
    frame_ancestors: str = Field("'none'", description="CSP frame-ancestors: who may frame the page, e.g. "
                                 "'self' https://portal.example.com")
    server_header: bool = Field(False, description="send 'server: uvicorn'")
    http_parser: Literal["httptools", "h11"] = Field("httptools", description="HTTP/1.1 parser; httptools "
                                                      "refuses ambiguous framing (CL + TE) itself")
    api_keys: CommaList = Field(default_factory=list, repr=False)

    # Sources by URL, signed GET links and caching (docs/urls.md)
    source_allow: CommaList = Field(default_factory=list, description="hosts whose images may be fetched by URL: "
                                    "names, *.example.com, * (any public host), and addresses or networks that "
                                    "may be fetched although not public (127.0.0.1, 10.0.0.0/8); empty = off")
    source_connect_timeout_s: float = Field(5.0, gt=0, description="time to connect to a source's server")
    source_timeout_s: float = Field(20.0, gt=0, description="time for a whole source fetch, redirects included")
    source_max_redirects: int = Field(3, ge=0, le=10, description="redirects followed, each checked again")
    url_keys: CommaList = Field(default_factory=list, repr=False, description="HMAC keys for signed GET links; "
                                "several at once for rotation (the first signs, any verifies)")
    url_unsigned: Literal["refuse", "allow"] = Field("refuse", description="unsigned GET links: 'allow' only on a "
                                                     "private network")
    cache_max_age: int = Field(86400, ge=0, description="Cache-Control max-age of GET results, in seconds")
    result_cache_mb: int = Field(0, ge=0, description="in-process LRU of encoded results, in MB; 0 = off")
    log_level: str = Field("info")
    log_format: Literal["text", "json"] = Field("text")
    warmup: bool = Field(True, description="run every model once at start-up")

    @field_validator("models", "cameras", "cors_origins", "api_keys", "source_allow", "url_keys", "trusted_proxies",
                     mode="before")
    @classmethod
    def split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("models")
    @classmethod
    def known_models(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in MODEL_NAMES]
        if unknown or not value:
            raise ValueError(f"models must be a non-empty subset of {list(MODEL_NAMES)}, got {value}")
        return value

    @field_validator("url_keys")
    @classmethod
    def long_keys(cls, value: list[str]) -> list[str]:
        if any(len(key) < MIN_KEY_CHARS for key in value):
            raise ValueError(f"each of IMDN_URL_KEYS must be at least {MIN_KEY_CHARS} characters (one signed link "
                             "lets anyone test guesses of a short key offline)")
        return value

    @field_validator("source_allow")
    @classmethod
    def source_entries(cls, value: list[str]) -> list[str]:
        from service.sources import SourcePolicy  # the one parser of the entries

        try:
            SourcePolicy.from_entries(value)
        except ValueError as exc:
            raise ValueError(f"IMDN_SOURCE_ALLOW: {exc}") from exc
        return value
    @field_validator("trusted_proxies")
    @classmethod
    def networks(cls, value: list[str]) -> list[str]:
        try:
            return [str(ipaddress.ip_network(item, strict=False)) for item in value]
        except ValueError as exc:
            raise ValueError(f"trusted_proxies must be IP addresses or CIDRs, got {value}: {exc}") from exc

    @field_validator("frame_ancestors")
    @classmethod
    def frame_sources(cls, value: str) -> str:
        """CSP source expressions only: 'none', 'self' (quotes optional) or scheme/host sources."""
        sources = []
        for source in value.split():
            keyword = source.strip("'")
            sources.append(f"'{keyword}'" if keyword in ("none", "self") else source)
        host_source = r"([A-Za-z][A-Za-z0-9+.-]*://)?(\*\.)?[A-Za-z0-9.-]+(:(\d+|\*))?/?|[A-Za-z][A-Za-z0-9+.-]*:"
        valid = all(s in ("'none'", "'self'") or re.fullmatch(host_source, s) for s in sources)
        if not sources or not valid or ("'none'" in sources and len(sources) > 1):
            raise ValueError(f"frame_ancestors must be 'none', or 'self' and/or origins like https://a.example, "
                             f"got {value!r}")
        return " ".join(sources)

    @property
    def concurrency(self) -> int:
        return self.max_concurrent or 2 * self.replicas_per_device


@lru_cache
def get_settings() -> Settings:
    return Settings()
