"""Every setting dockguard reads, in one place: environment variables prefixed `DOCKGUARD_`
(or a `.env` file). Lists are comma-separated. README's configuration table is checked against
this class by a test, so a setting cannot go undocumented."""

from __future__ import annotations

import os
import re
from enum import StrEnum
from typing import Annotated, Literal

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dockguard.redis_url import parse_redis_url


class Severity(StrEnum):
    CRITICAL = "CRITICAL"
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"
    UNKNOWN = "UNKNOWN"


CommaList = Annotated[list[str], NoDecode]
# Values this repository publishes as examples (EXAMPLE_SECRETS_FILE): refused at start.
EXAMPLE_SECRETS_FILE = "deploy/k8s/overlays/single-node/example-secrets.env"
EXAMPLE_SECRETS = {
    "DOCKGUARD_ENCRYPTION_KEY": {"RVhBTVBMRS1PTkxZLW5vdC1hLXNlY3JldC1rZXkhISE="},
    "DOCKGUARD_CALLBACK_SECRET": {"example-callback-secret"},
    "redis password": {"example-redis-password"},
}
_PINNED = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}\Z")
_ORIGIN = re.compile(r"^https?://[^\s/?#@]+\Z")


class Settings(BaseSettings):
    # Errors never echo a value: it may be a key or a password in a Redis URL.
    model_config = SettingsConfigDict(
        env_prefix="DOCKGUARD_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    # Service
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # redis://, rediss://, unix:// or redis+sentinel://sentinel:26379,…/master[/db]
    # (redis_url.py); None: `serve` starts a private redis-server.
    redis_url: str | None = None
    docker_url: str | None = None
    docker_timeout_s: float = Field(30.0, gt=0)
    # `serve`'s API processes: more than 1 runs uvicorn's supervisor (API only: needs --no-worker
    # and DOCKGUARD_REDIS_URL).
    api_workers: int = Field(1, ge=1)
    # How long `serve`, on SIGTERM, lets open requests finish before it cancels them (uvicorn's
    # timeout_graceful_shutdown). Under Kubernetes' default 30 s grace, with a margin.
    api_shutdown_grace_s: int = Field(25, ge=0)
    worker_concurrency: int = Field(4, ge=1)
    # How long a worker, on SIGTERM, lets its running jobs finish (taking no new one) before it
    # hands them back to the queue; their cleanup then takes up to 120 s more (jobs/worker.py).
    worker_shutdown_grace_s: float = Field(60.0, ge=0)
    worker_metrics_port: int = Field(9101, ge=0, le=65535)  # `dockguard worker`'s /metrics; 0: off
    # The API's /metrics also on this port (on DOCKGUARD_HOST), alone: what a network policy opens
    # to Prometheus instead of the whole API (api/metrics_port.py). 0: only on the API's port.
    api_metrics_port: int = Field(0, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console", "text"] = "json"
    otel_endpoint: str | None = None  # OTLP/HTTP collector, e.g. http://127.0.0.1:4318; None: off
    cors_origins: CommaList = []  # browser origins allowed to call the API; empty: CORS off
    # Checks /readyz leaves out of its verdict as if `?exclude=` named them: `docker` for an API
    # given no engine socket (compose.yaml's), `workers` where workers scale to zero.
    readyz_exclude: Annotated[list[Literal["docker", "workers"]], NoDecode] = []

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        """Origins exactly as browsers send them: one with a path (even a final `/`) would
        silently never match."""
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list):
            for number, origin in enumerate(value, start=1):
                if origin != "*" and not (isinstance(origin, str) and _ORIGIN.match(origin)):
                    raise ValueError(
                        f"origin {number} of {len(value)} is not scheme://host[:port] or *"
                    )
        return value

    # Jobs and submissions
    job_ttl_s: int = Field(86400, ge=1)
    queue_timeout_s: int = Field(3600, ge=1)
    job_timeout_s: float = Field(0, ge=0)  # 0: the steps' timeouts together, plus 300 s
    max_dockerfile_bytes: int = Field(65536, ge=1)
    max_queued: int = Field(1000, ge=1)  # jobs in the queue; a submission past it gets 429

    # Webhooks (callback_url): hosts they may go to (empty: off), and how they are sent
    callback_allowed_hosts: CommaList = []
    callback_secret: SecretStr | None = None  # HMAC-SHA256 key of X-Dockguard-Signature
    callback_timeout_s: float = Field(10.0, gt=0, le=300)
    callback_max_attempts: int = Field(5, ge=1, le=50)
    callback_backoff_s: float = Field(1.0, gt=0, le=3600)  # doubles after each failed attempt

    @field_validator("callback_allowed_hosts", mode="before")
    @classmethod
    def _callback_hosts(cls, value: object) -> object:
        from dockguard.callbacks import parse_allowlist

        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list):
            parse_allowlist([str(item) for item in value])  # ValueError names the bad entry
        return value

    @field_validator("callback_secret", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    # Submission policy
    allowed_base_images: CommaList = []
    require_base_digest: bool = False
    max_stages: int = Field(8, ge=1)
    max_instructions: int = Field(200, ge=1)
    allow_parser_directives: bool = False
    allow_remote_add: bool = False
    allow_run_flags: bool = False
    allow_onbuild: bool = False

    # Scans: policy
    scan_fail_on: Annotated[list[Severity], NoDecode] = [Severity.HIGH, Severity.CRITICAL]
    scan_ignore: CommaList = []
    scan_ignore_unfixed: bool = False
    scan_image: bool = True
    scan_cache_ttl_s: int = Field(7 * 86400, ge=0)
    scan_image_max_mb: int = Field(4096, ge=1)

    # Scanner (Trivy)
    scanner_backend: Literal["local", "container"] = "local"
    scanner_timeout_s: float = Field(300.0, gt=0)
    scanner_memory_mb: int = Field(2048, ge=128)
    scanner_cache_dir: str = "~/.cache/dockguard/trivy"
    scanner_db_max_age_h: float = Field(48.0, gt=0)
    scanner_allow_stale_db: bool = False
    scanner_db_repository: str | None = None
    scanner_db_refresh_h: float = Field(6.0, ge=0)
    trivy_binary: str | None = None
    trivy_image: str | None = None

    # Build
    build_timeout_s: float = Field(600.0, gt=0)
    # egress: a per-job internal network whose only way out is an allowlisting proxy;
    # none: loopback only; bridge: the engine's default bridge (reaches the host: opt-in only).
    build_network: Literal["egress", "none", "bridge"] = "egress"
    build_egress_allow: str = ""  # host patterns; empty: this machine's apt and pip sources
    build_egress_proxy_image: str = Field("dockguard/egress-proxy:1", min_length=1)

    @field_validator("build_egress_allow")
    @classmethod
    def _host_patterns(cls, value: str) -> str:
        from dockguard.sandbox.egress import parse_allowlist  # sandbox imports these settings

        return ",".join(parse_allowlist(value))

    build_memory_mb: int = Field(2048, ge=64)
    build_cpus: float = Field(1.0, gt=0)
    build_pids: int = Field(1024, ge=0)
    build_file_size_mb: int = Field(4096, ge=1)
    build_nofile: int = Field(1024, ge=16)
    build_nocache: bool = True
    build_pull_allow: CommaList = []  # images the engine may pull; empty: only local ones

    # Run
    run_timeout_s: float = Field(300.0, gt=0)
    run_memory_mb: int = Field(512, ge=8)
    run_cpus: float = Field(1.0, gt=0)
    run_pids: int = Field(128, ge=8)
    run_tmpfs_mb: int = Field(64, ge=1)
    run_file_size_mb: int = Field(256, ge=1)
    run_data_mb: int = Field(64, ge=1)
    run_data_holder_image: str = Field("busybox:latest", min_length=1)
    run_nofile: int = Field(1024, ge=16)
    runtime: str | None = None
    result_max_bytes: int = Field(65536, ge=64)
    log_tail_lines: int = Field(50, ge=0)
    # The live log (GET /v1/jobs/{id}/logs): lines kept per job, and characters per line.
    log_max_lines: int = Field(5000, ge=10, le=1_000_000)
    log_line_max_chars: int = Field(1000, ge=80, le=65_536)

    # Data protection
    encryption_key: SecretStr | None = None
    dockerfile_redis_url: str | None = None
    keep_dockerfile_s: int = Field(0, ge=0)

    @field_validator("redis_url", "dockerfile_redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        """Read at start as services.py reads it when it connects: a wrong URL stops the start
        with what is wrong (RedisUrlError, a ValueError that never repeats the URL)."""
        if value is not None:
            parse_redis_url(value)
        return value

    @field_validator("encryption_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("encryption_key")
    @classmethod
    def _fernet_keys(cls, value: SecretStr | None) -> SecretStr | None:
        """Comma-separated Fernet keys (the first encrypts); the error never shows a key."""
        if value is None:
            return None
        keys = [key.strip() for key in value.get_secret_value().split(",")]
        for number, key in enumerate(keys, start=1):
            try:
                Fernet(key)
            except ValueError:
                raise ValueError(
                    f"key {number} of {len(keys)} is not a Fernet key (32 url-safe base64-encoded "
                    "bytes; make one with Fernet.generate_key() from the cryptography package)"
                ) from None
        return value

    @model_validator(mode="after")
    def _no_example_secrets(self) -> Settings:
        """The single-node Kubernetes overlay's example secrets, deployed as they are, would
        protect nothing: everyone can read them in this repository."""
        found = []
        if self.encryption_key is not None:
            keys = {key.strip() for key in self.encryption_key.get_secret_value().split(",")}
            if keys & EXAMPLE_SECRETS["DOCKGUARD_ENCRYPTION_KEY"]:
                found.append("DOCKGUARD_ENCRYPTION_KEY")
        secret = self.callback_secret.get_secret_value() if self.callback_secret else ""
        if secret in EXAMPLE_SECRETS["DOCKGUARD_CALLBACK_SECRET"]:
            found.append("DOCKGUARD_CALLBACK_SECRET")
        for name, url in (
            ("DOCKGUARD_REDIS_URL", self.redis_url),
            ("DOCKGUARD_DOCKERFILE_REDIS_URL", self.dockerfile_redis_url),
        ):
            if url and any(f":{word}@" in url for word in EXAMPLE_SECRETS["redis password"]):
                found.append(f"{name} (its password)")
        if found:
            raise ValueError(
                f"{', '.join(found)}: the example value of {EXAMPLE_SECRETS_FILE}, public in "
                "dockguard's repository; make your own (README, Deploying)"
            )
        return self

    @model_validator(mode="after")
    def _container_backend_pinned(self) -> Settings:
        if self.scanner_backend == "container" and self.trivy_image is None:
            raise ValueError(
                "DOCKGUARD_SCANNER_BACKEND=container needs DOCKGUARD_TRIVY_IMAGE (pinned by digest)"
            )
        return self

    @field_validator("scanner_cache_dir")
    @classmethod
    def _expand_home(cls, value: str) -> str:
        return os.path.expanduser(value) if value.startswith("~") else value

    @field_validator("trivy_image")
    @classmethod
    def _pinned(cls, value: str | None) -> str | None:
        if value is not None and not _PINNED.match(value):
            raise ValueError("must be pinned by digest: IMAGE@sha256:<64 hex digits>")
        return value

    @field_validator("scan_fail_on", "scan_ignore", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip().upper() for item in value.split(",") if item.strip()]
        return value

    @field_validator("readyz_exclude", mode="before")
    @classmethod
    def _split_checks(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip().lower() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_base_images", "build_pull_allow", mode="before")
    @classmethod
    def _split_patterns(cls, value: object) -> object:
        """Like `_split_commas`, but image references keep their case."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
