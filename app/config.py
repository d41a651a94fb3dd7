"""All configuration, read from the environment with the prefix XMR_."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.services.encoding import EncodingLimits
from index import DEFAULT_MAX_METADATA_BYTES, IndexOptions
from models.options import LoadOptions
from models.threads import available_cores


class Settings(BaseSettings):
    """Service settings; every field is set by `XMR_<NAME>` (e.g. XMR_MODEL, XMR_DATA_DIR)."""

    model_config = SettingsConfigDict(
        env_prefix="XMR_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    model: str = Field("ViT-B-32", description="open_clip model name, or a bundled one")
    pretrained: str | None = Field(
        None,
        description=(
            "open_clip pretrained tag, or a local checkpoint path, or '' for random weights. "
            "Unset: the bundled weights of a bundled model, else laion2b_s34b_b79k."
        ),
    )
    device: str = Field("auto", description="auto (CUDA when available, else CPU), cpu, cuda:0")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="model weights and inputs: auto is fp16 on CUDA, bf16 on a CPU with bf16 "
        "instructions (AVX512-BF16, AMX), else fp32",
    )
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto",
        description="what runs the model: auto is OpenVINO on the CPU (PyTorch if it cannot "
        "reproduce PyTorch's vectors) and PyTorch on CUDA",
    )
    runtime_cache_dir: Path | None = Field(
        None,
        description="where ONNX exports of the model are kept; default ~/.cache/xmr/runtimes",
    )
    model_cache_dir: str | None = Field(None, description="open_clip cache_dir; default HF cache")
    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line, with the request id"
    )

    import_root: Path | None = Field(
        None, description="batch items may name image_path files under this folder only"
    )
    api_key: SecretStr | None = Field(
        None, description="when set, every route but /healthz and /readyz needs this key"
    )
    admin_key: SecretStr | None = Field(
        None,
        description="when set, creating, deleting and re-embedding collections and starting "
        "tagging jobs need this key (403 with XMR_API_KEY's); it works on every other route too",
    )
    docs_public: bool = Field(False, description="serve /docs and /openapi.json without the key")
    allowed_hosts: str | None = Field(
        None,
        description="comma-separated Host names the server answers to (DNS rebinding); unset: "
        "the loopback names when bound to loopback, else any host",
    )
    cors_origins: str = Field(
        "",
        description="comma-separated origins (https://app.example.com) whose pages may call the "
        "API from a browser, writes included; other origins' writes are refused",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body that sends nothing for this long gets 408"
    )
    max_upload_mb: float = Field(
        50.0, gt=0, description="largest request body, and largest file a batch job reads"
    )
    max_batch_upload_mb: float = Field(
        2048.0, gt=0, description="largest body of POST /v1/batch and /v1/vectors"
    )
    max_image_pixels: int = Field(50_000_000, gt=0)
    max_decoded_image_mb: float = Field(
        256.0,
        gt=0,
        description="largest image in decoded bytes (pixels x bytes a pixel: 16-bit RGBA is 8)",
    )
    max_metadata_bytes: int = Field(
        DEFAULT_MAX_METADATA_BYTES,
        ge=2,
        description="largest metadata of one item, as JSON (nesting is limited to 32 levels)",
    )
    keep_gps: bool = Field(
        False,
        description="keep where a photo was taken (metadata exif.gps); off, the place in a "
        "photo's EXIF is never stored",
    )
    max_response_mb: float = Field(
        64.0, gt=0, description="largest search response; asking for more results is a 422"
    )
    max_k: int = Field(1000, ge=1)
    duplicates_sync_limit: int = Field(
        20_000,
        ge=0,
        description="GET /v1/duplicates over more items than this answers 202 and runs as a job",
    )
    allowed_models: str | None = Field(
        None,
        description="comma-separated models API clients may name when they create or re-embed "
        "a collection: MODEL (any pretrained tag open_clip knows for it) or MODEL/PRETRAINED "
        "(exactly; local paths, hf-hub:, local-dir: and random weights only when listed so). "
        "Unset: the configured XMR_MODEL/XMR_PRETRAINED and the bundled models",
    )
    max_collections: int = Field(
        100, ge=1, le=100_000, description="most collections a server holds, default included"
    )
    max_models: int = Field(
        2, ge=1, le=64, description="most models loaded at once, shared by the collections"
    )
    encode_batch_size: int = Field(32, ge=1, le=4096, description="items per batch-job step")
    max_batch: int = Field(64, ge=1, le=4096, description="most items in one model call")
    max_queue: int = Field(
        1024, ge=1, description="items waiting per encoder before requests get 429"
    )
    query_cache_mb: float = Field(
        8.0,
        ge=0,
        description="vectors of recent query texts kept per loaded model, so that a query asked "
        "again skips the model (about 2.8 KB each for 512 dimensions: 8 MB hold ~2,900); 0 = off",
    )
    decode_workers: int = Field(
        default_factory=lambda: min(8, available_cores()),
        ge=1,
        le=64,
        description="threads that decode and preprocess images beside the inference thread",
    )
    jpeg_draft: bool = Field(
        True, description="decode large JPEGs at a reduced scale (still >= 2x the model input)"
    )
    index: str = Field(
        "auto",
        description=(
            "FAISS index structure: auto (exact below index_approx_threshold vectors, then "
            "IVF-SQ8 while it fits index_memory_mb, else IVF-PQ), or a factory string: Flat, "
            "HNSW32, IVF4096,PQ64"
        ),
    )
    index_backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="faiss (in-process, the default) or milvus"
    )
    milvus_uri: str | None = Field(
        None,
        description="Milvus Lite file (default <data_dir>/milvus.db) or http://host:19530",
    )
    milvus_token: SecretStr | None = Field(None, description="Milvus user:password or API key")
    database_url: SecretStr | None = Field(
        None,
        description="postgresql://user:password@host:port/db: records, keywords and jobs in "
        "PostgreSQL, shared by every replica pointed at it; unset: SQLite in XMR_DATA_DIR",
    )
    blob_dir: Path | None = Field(
        None,
        description="where uploaded image bytes are kept, a folder per collection generation "
        "(a shared filesystem for several replicas); unset: inside each generation's folder",
    )
    blob_url: str | None = Field(
        None,
        pattern=r"^s3://[^/]+(/.*)?$",
        description="s3://bucket/prefix: uploaded image bytes in S3 or any S3-compatible store "
        "(boto3; AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION or an instance "
        "role), a prefix per collection generation; batch uploads are staged there too",
    )
    s3_endpoint_url: str | None = Field(
        None, description="the S3 API address of a store other than AWS (Ceph RGW, MinIO)"
    )
    s3_presign: bool = Field(
        False,
        description="GET .../content answers with a redirect to a presigned S3 URL instead of "
        "streaming the bytes through the replica",
    )
    s3_presign_expiry_s: int = Field(300, ge=1, le=7 * 86400)
    ray_address: str | None = Field(
        None,
        description="a Ray cluster (e.g. 10.0.0.5:6379, ray://host:10001): batch jobs decode and "
        "embed their images there, in XMR_RAY_WORKERS actors per model (a GPU each where the "
        "cluster has GPUs); the vectors are stored by the replica that runs the job",
    )
    ray_workers: int = Field(2, ge=1, le=1024, description="Ray actors per model in use")
    job_lease_s: float = Field(
        30.0,
        ge=1,
        description="how long a job stays claimed by a replica that stopped renewing it (one "
        "killed): then another replica takes it over",
    )
    index_approx_threshold: int = Field(100_000, ge=1)
    index_memory_mb: float = Field(4096.0, gt=0)
    filter_fields: str = Field(
        "",
        pattern=r"^\s*([A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}\s*(,\s*|$))*$",
        description="metadata fields to index for fast equality filters, comma-separated "
        "(album,exif.camera): each is a database index, built at start-up where missing",
    )
    record_vectors: Literal["float32", "float16"] = Field(
        "float32",
        description="how the vector kept beside each record is stored: float16 halves it (the "
        "cosine to float32 stays above 0.99999); the index in memory is float32 either way",
    )
    hnsw_ef_search: int = Field(128, ge=1, le=65_536)
    ivf_nprobe: int = Field(32, ge=1, le=65_536)
    snapshot_interval_s: float = Field(
        30.0, gt=0, description="how often changed FAISS indexes are saved to disk"
    )

    def trusted_hosts(self) -> list[str]:
        """Host header values to accept: the operator's list, else loopback names or any."""
        if self.allowed_hosts is not None and self.allowed_hosts.strip():
            return _split(self.allowed_hosts)
        if is_loopback(self.host):
            return sorted({"127.0.0.1", "localhost", "[::1]", _host_header_name(self.host)})
        return ["*"]

    def allowed_origins(self) -> list[str]:
        return [origin.rstrip("/") for origin in _split(self.cors_origins)]

    def load_options(self, precision: str, device: str | None = None) -> LoadOptions:
        """How a model is loaded here: its spec's precision, the settings' device (or
        `device`), runtime and caches."""
        return LoadOptions(
            device=device or self.device,
            precision=precision,
            runtime=self.runtime,
            model_cache_dir=self.model_cache_dir,
            runtime_cache_dir=self.runtime_cache_dir,
        )

    def encoding_limits(self) -> EncodingLimits:
        return EncodingLimits(
            max_image_pixels=self.max_image_pixels,
            max_batch=self.max_batch,
            max_queue=self.max_queue,
            decode_workers=self.decode_workers,
            jpeg_draft=self.jpeg_draft,
            max_decoded_bytes=int(self.max_decoded_image_mb * 2**20),
            query_cache_bytes=int(self.query_cache_mb * 2**20),
        )

    def index_options(self) -> IndexOptions:
        return IndexOptions(
            spec=self.index,
            approx_threshold=self.index_approx_threshold,
            memory_budget_mb=self.index_memory_mb,
            ef_search=self.hnsw_ef_search,
            nprobe=self.ivf_nprobe,
            backend=self.index_backend,
            milvus_uri=self.milvus_uri,
            milvus_token=self.milvus_token.get_secret_value() if self.milvus_token else None,
            database_url=self.database_url.get_secret_value() if self.database_url else None,
            blob_dir=self.blob_dir,
            blob_url=self.blob_url,
            s3_endpoint_url=self.s3_endpoint_url,
            filter_fields=tuple(_split(self.filter_fields)),
            record_vectors=self.record_vectors,
        )


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _host_header_name(host: str) -> str:
    """How a client names `host` in a Host header: IPv6 literals go in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host.lower()


def _split(values: str) -> list[str]:
    return [value.strip() for value in values.split(",") if value.strip()]
