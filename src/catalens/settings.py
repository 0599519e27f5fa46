"""Settings: ``CATALENS_*`` environment variables, an optional TOML file, then defaults.

One ``Settings`` object is built at the edge (CLI, app factory) and passed down explicitly;
nothing reads the environment below this module.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

IndexType = Literal["flat", "hnsw", "ivf"]
Metric = Literal["cosine", "l2"]

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
FALLBACK_MODEL = "efficientnet-lite0"


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("catalens", appauthor=False))


def config_file() -> Path | None:
    """``CATALENS_CONFIG`` if set, else ``$CATALENS_HOME/catalens.toml`` when it exists."""
    explicit = os.environ.get("CATALENS_CONFIG")
    if explicit:
        return Path(explicit)
    home = Path(os.environ.get("CATALENS_HOME") or default_home())
    candidate = home / "catalens.toml"
    return candidate if candidate.is_file() else None


class SourceCredential(BaseModel):
    """A secret a catalog source may send, declared by the operator (``source_credentials``).

    A source names it (``"options": {"credential": "shop"}``) and never sees it: the token
    is read here, from ``value`` or the environment variable ``env``, only when a sync sends
    it in ``header`` (after ``scheme``: ``Bearer`` for ``Authorization``, none otherwise).
    ``urls``: the URL prefixes it may be sent to; a source named over the HTTP API may use
    it only for a location under one of them (none: only the CLI and library may use it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    header: str = Field(default="Authorization", min_length=1)
    scheme: str | None = None
    env: str | None = None
    value: SecretStr | None = None
    urls: tuple[str, ...] = ()

    def header_value(self) -> str | None:
        """The header's value, or ``None`` when its token is not set."""
        if self.value is not None:
            token = self.value.get_secret_value()
        else:
            token = os.environ.get(self.env, "") if self.env else ""
        if not token:
            return None
        default = "Bearer" if self.header.lower() == "authorization" else ""
        scheme = (self.scheme if self.scheme is not None else default).strip()
        return f"{scheme} {token}" if scheme else token

    def allows(self, url: str) -> bool:
        """Whether a source named over the HTTP API may send it to ``url``: same scheme,
        host and port as one of ``urls``, and a path under that one's."""
        target = urlsplit(url)
        for prefix in self.urls:
            allowed = urlsplit(prefix)
            same_origin = (target.scheme.lower(), target.netloc.lower()) == (
                allowed.scheme.lower(),
                allowed.netloc.lower(),
            )
            if same_origin and target.path.startswith(allowed.path):
                return True
        return False


class Settings(BaseSettings):
    """Every knob catalens has. Environment: ``CATALENS_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="CATALENS_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    """Where collections, the download cache and exported models live."""

    # Models
    model: str = DEFAULT_MODEL
    """Default model for new collections: a hub id, a local directory, or a built-in name."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    batch_size: int = Field(default=32, ge=1)
    hf_offline: bool = False
    """Load Hugging Face models from the local cache only."""
    clip_runtime: Literal["onnx", "torch", "auto"] = "auto"
    """Where CLIP runs: ``auto`` is ONNX Runtime on CPU (when the export exists or can be
    made) and torch on CUDA; ``onnx`` or ``torch`` force one."""
    onnx_auto_export: bool = True
    """Export a CLIP model to ONNX under ``home/models`` on first use (else: only
    ``catalens models export`` makes exports)."""
    clip_int8_guard: bool = True
    """With ``clip_runtime=auto`` on a CPU, a new collection runs CLIP on its int8 export when
    int8 agrees with fp32 on the collection's own images (``embedders/int8_guard.py``); else
    fp32. A ``:int8`` / ``:fp32`` suffix on the model spec forces one."""
    clip_int8_min_cosine: float = Field(default=0.995, ge=0, le=1)
    """The int8 guard: least mean cosine between int8 and fp32 vectors over the sample."""
    clip_int8_min_top1: float = Field(default=0.99, ge=0, le=1)
    """The int8 guard: least share of sample images whose nearest neighbour is the same."""
    clip_int8_sample: int = Field(default=32, ge=2)
    """The int8 guard: images of the collection embedded both ways (its first ingest)."""

    # Vector store
    store: str = "faiss"
    index: IndexType = "flat"
    metric: Metric = "cosine"
    hnsw_m: int = Field(default=32, ge=4)
    hnsw_ef_construction: int = Field(default=200, ge=8)
    hnsw_ef_search: int = Field(default=128, ge=8)
    ivf_nlist: int = Field(default=0, ge=0)
    """IVF lists; 0 picks about 4*sqrt(n) when the index is trained."""
    ivf_nprobe: int = Field(default=16, ge=1)

    # Images and downloads
    max_image_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    max_query_pixels: int = Field(default=25_000_000, ge=1)
    """The most pixels a query photo is decoded at (after a large JPEG's reduced-scale
    decode, which a 48 MP phone photo passes): lower than ``max_image_pixels``, which
    bounds catalog images, because anyone may send queries."""
    decode_pixel_budget: int = Field(default=50_000_000, ge=1)
    """Query pixels being decoded at once, in all (a PNG peaks near 12 bytes a pixel, so 50 MP
    is some 600 MB): a query over it waits up to ``decode_wait_seconds``, then is refused as
    busy (HTTP 503)."""
    decode_wait_seconds: float = Field(default=2.0, ge=0)
    download_workers: int = Field(default=8, ge=1)
    download_timeout: float = Field(default=10.0, gt=0)
    download_retries: int = Field(default=3, ge=0)

    # Search
    top_k: int = Field(default=10, ge=1)
    threshold: float | None = None
    """The least calibrated probability a photo search returns (a calibrated collection),
    else the least uncentred cosine: neither drifts as queries arrive."""
    calibration_views: int = Field(default=3, ge=0)
    """Synthetic shopper-like views per sampled product the cold-start calibration is fitted
    on at ingest (``collection/cold_start.py``); 0: none (held-out images only)."""
    query_zooms: tuple[float, ...] = (1.0, 1.25, 1.5625)
    """Centre zooms averaged for photo queries in new collections (see search/query_crops.py)."""
    centering: bool = True
    """Domain centering (running mean of queries) for new collections."""
    query_flip: bool = False
    """Also average the mirrored query's zoom views, for new collections."""
    aggregation: Literal["max", "blend"] = "blend"
    """How a product's images are scored in new collections (see search/scoring.py): its
    best image, or a blend of that with the centroid of its images."""
    blend_weight: float = Field(default=0.5, ge=0.0, le=1.0)
    """With ``blend``: the weight of the best image (the centroid gets the rest)."""
    photo_scoring: Literal["views", "evidence"] = "views"
    """How confirmed photos score in new collections (see search/photo_evidence.py)."""

    # Feedback (see feedback/confirmed_photos.py and ledger/query_log.py)
    query_retention_seconds: float = Field(default=3600.0, ge=0)
    """How long a searched photo (and its vectors) is kept so feedback can refer to it by
    ``query_id``."""
    query_retention_max: int = Field(default=1000, ge=0)
    """At most this many searched photos are kept (the oldest go first; 0 keeps none)."""
    max_confirmed_views: int = Field(default=20, ge=1)
    """Confirmed shopper photos kept per product; past it the most redundant one goes."""
    feedback_corroborations: int = Field(default=2, ge=0)
    """A keyless verdict applies when this many distinct clients named the same product for
    similar photos (``feedback/trust.py``); 0: only a keyed review applies them."""
    feedback_similarity: float = Field(default=0.8, ge=0, le=1)
    """How similar (cosine) corroborating photos must be."""
    feedback_agree_rank: int = Field(default=0, ge=0)
    """Off by default: a keyless ``correct``/``actually`` verdict also applies when its
    product is among this many best products for the photo (docs/quality.md: risky)."""
    feedback_keyless_per_minute: float = Field(default=6.0, ge=0)
    """Keyless verdicts a client may send per minute (past the burst: 429, ``Retry-After``)."""
    feedback_keyless_burst: int = Field(default=20, ge=1)

    # HTTP service (catalens serve)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    default_collection: str | None = None
    """Collection behind the seeds' compatibility routes (else the only one there is)."""
    api_keys: tuple[str, ...] = ()
    """When set, write and admin routes need ``X-API-Key`` with one of these."""
    search_requires_key: bool = False
    cors_origins: tuple[str, ...] = ()
    """Other origins whose web pages may call the API from a browser (a JSON list, e.g.
    ``["https://shop.example"]``; ``["*"]``: any page). Empty: only the service's own pages.
    Without API keys, a write request from any other origin is refused (403)."""
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    """The least severe log lines ``catalens serve`` writes (``CATALENS_LOG_LEVEL``)."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object a line (time, level, logger, message, request_id)."""
    url_allowlist: tuple[str, ...] = ()
    """Hosts (or host:port) that search-by-URL may fetch even though they are internal."""
    url_fetch_timeout: float = Field(default=10.0, gt=0)
    """The whole of one search-by-URL fetch (connect, headers, body, retries, redirects)."""
    url_fetch_concurrency: int = Field(default=8, ge=1)
    """Search-by-URL fetches at once; past it a URL search is refused as busy (HTTP 503)
    at once, so slow hosts never hold the threads that uploads are searched on."""
    api_local_image_dirs: tuple[Path, ...] = ()
    """Directories whose files the HTTP API may make the server read (a JSON list in the
    environment): images of upserted products, a catalog file or folder given as a
    collection's source, and the images that catalog names. Empty: the API may name only
    http(s) URLs, fetched behind the address guard; the CLI and library read any local path."""

    # Live sync with a shop backend
    refresh_seconds: float = Field(default=0.0, ge=0)
    """Sync every collection with a source this often (0: only on demand or webhook)."""
    job_stale_seconds: float = Field(default=30.0, gt=2.0)
    """A running sync whose process gave no sign of life for this long reads as failed
    (its process writes it every 2 s, or a quarter of this when shorter; see api/jobs.py)."""
    rest_url: str | None = None
    """Seed 000's NESTJS_SERVER: the backend whose products feed the default collection."""
    source_credentials: dict[str, SourceCredential] = Field(default_factory=dict)
    """Named secrets catalog sources may send (a JSON object in the environment, e.g.
    ``{"shop": {"header": "X-Shop-Token", "env": "SHOP_TOKEN", "urls": ["https://shop/"]}}``):
    a source names one (``options.credential``) and never holds or shows the secret."""
    max_removed_share: float = Field(default=0.5, ge=0.0, le=1.0)
    """An ingest or sync that would remove more than this share of a collection's products
    stops and changes nothing, unless forced (``--force-removals``, ``force_removals``)."""

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        # CATALENS_LOG_LEVEL=DEBUG, as logging spells it, reads as well as "debug".
        return value.lower() if isinstance(value, str) else value

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
        path = config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def collections_dir(self) -> Path:
        return self.home / "collections"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def models_dir(self) -> Path:
        """ONNX exports of CLIP models, one folder per model and revision."""
        return self.home / "models"


def read_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        return tomllib.load(handle)
