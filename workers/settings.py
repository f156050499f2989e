"""One `Settings` object for the whole of b24q, read from environment variables and `.env`.

Every variable is prefixed `B24Q_` (`B24Q_REDIS_URL`, `B24Q_CLIENT_ID`, ...); `REDIS_URL` is accepted too
because that is what most hosting platforms set. The README lists every setting.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Bitrix24's documented leaky-bucket parameters (drain rate per second, burst threshold). Self-hosted
#: ("box") portals have no REST rate limit unless their administrator sets one: rate 0 means unlimited.
PLAN_LIMITS: dict[str, tuple[float, int]] = {"standard": (2.0, 50), "enterprise": (5.0, 250), "box": (0.0, 0)}

#: Bitrix24's cloud domain zones: a cloud portal is `<name>.bitrix24.<zone>`. The REST docs name no full
#: list (b24restdocs market/preparing-to-publish/faq.md: "domain zones such as .com, .de, and so on"); this
#: is the map from portal zone to domain in Bitrix24's own code (module disk,
#: `Bitrix\Disk\Document\OnlyOffice\Editor\CustomizationBuilder::getUrlForCustomerSection`, keyed by
#: `CBitrix24::getPortalZone()`). The README's row of B24Q_PORTAL_HOSTS cites it too.
BITRIX24_CLOUD_ZONES = (
    "com", "eu", "de", "es", "fr", "it", "pl", "com.br", "com.tr", "in", "id", "vn", "jp", "cn", "ru", "ua", "by", "kz"
)  # fmt: skip

#: One entry of B24Q_API_KEYS: a key's SHA-256 in hex, then optionally the portals it is limited to, or `*admin`
#: (an operator's key, for the console).
API_KEY_ENTRY = re.compile(r"[0-9a-fA-F]{64}(:\*admin|:[A-Za-z0-9.\-_:]+(\|[A-Za-z0-9.\-_:]+)*)?")


class Settings(BaseSettings):
    """Configuration of producers, workers and the CLI.

    Parameters are documented field by field; defaults suit a production pool on the standard plan.
    """

    model_config = SettingsConfigDict(env_prefix="B24Q_", env_file=".env", extra="ignore")

    # --- Redis (broker, limiter, token store, ledger, dead letters) ---
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("B24Q_REDIS_URL", "REDIS_URL"),
        description="Redis for the broker and all shared state; rediss:// for TLS, password in the URL; "
        "sentinel://h1:26379;sentinel://h2:26379/0 for Redis Sentinel.",
    )
    redis_sentinel_master: str = Field(
        "mymaster", description="The master's name at the sentinels (with a sentinel:// URL)."
    )
    redis_sentinel_password: SecretStr = Field(
        SecretStr(""), description="Password of the sentinels themselves, if they require one."
    )
    broker_url: str = Field(
        "",
        description="Where the jobs' messages live: empty = the Redis of B24Q_REDIS_URL; "
        "amqp://user:pw@host:5672/vhost (amqps:// for TLS) = RabbitMQ, with quorum queues and publisher confirms, "
        "Redis then holding state only (README: Running workers, which broker to choose).",
    )
    broker_delivery_limit: int = Field(
        10,
        ge=1,
        description="RabbitMQ: deliveries of one message (a worker died or stopped holding it) before it is moved "
        "aside and kept as the dead letter DELIVERY_LIMIT.",
    )
    broker_heartbeat: float = Field(
        5.0,
        ge=0.0,
        description="RabbitMQ: seconds of a worker's AMQP heartbeat. A worker that stops answering (frozen, "
        "SIGSTOPped, its host gone) has its connection closed by RabbitMQ after two to three of them, which puts "
        "its jobs back in their queue (0 = none: they wait until the TCP connection itself fails).",
    )
    key_prefix: str = Field("b24q", description="Prefix of every Redis key b24q writes (besides the broker's).")
    queue: str = Field("b24q", description="Celery queue the jobs go to.")

    # --- OAuth application ---
    client_id: str = Field("", description="The application's client_id (local or Marketplace app).")
    client_secret: SecretStr = Field(SecretStr(""), description="The application's client_secret.")
    oauth_url: str = Field("https://oauth.bitrix.info/oauth/token/", description="OAuth token endpoint.")
    oauth_timeout: float = Field(10.0, description="Seconds for one refresh call; the refresh lock outlives it.")
    refresh_ahead: float = Field(
        60.0, description="Refresh a token this many seconds before `expires` (never earlier: the docs warn)."
    )
    allow_insecure_http: bool = Field(
        False,
        description="Allow http:// and ports other than 443 in portal and OAuth URLs that are not on loopback "
        "(tests only).",
    )
    allow_private_portals: bool = Field(
        False,
        description="Let a portal's endpoint be a loopback, private, link-local or other non-public address (by "
        "name or literal), and skip the check of the address each call connects to; on loopback, http and any "
        "port too. For the emulator, tests and self-hosted portals on a LAN.",
    )

    # --- REST calls ---
    connect_timeout: float = Field(3.0, description="TCP connect timeout for portal calls.")
    request_timeout: float = Field(30.0, description="Read timeout for one portal call (the cloud cuts at 60 s).")

    # --- Limits ---
    plan: Literal["standard", "enterprise", "box"] = Field(
        "standard", description="Default plan of new portals (box: self-hosted, no rate limit)."
    )
    headroom: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of each portal's rate and burst left for other apps on its IP.",
    )
    burst_margin: int = Field(
        5, ge=0, description="Requests of the burst never used, to absorb network jitter (at most a tenth of it)."
    )
    operating_limit: float = Field(480.0, description="Seconds of method execution per 10 min before 429.")
    operating_margin: float = Field(10.0, description="Hold a method this many seconds before its budget ends.")

    # --- Batching ---
    batch_max: int = Field(50, ge=1, le=50, description="Commands per `batch` request (Bitrix24 allows 50).")
    gather_ms: float = Field(5.0, ge=0.0, description="How long a request waits for more jobs to pack with it.")
    gather_max_ms: float = Field(
        250.0, ge=0.0, description="Longest a request keeps gathering while more jobs keep arriving."
    )
    merge_max: int = Field(
        50, ge=1, description="Delivery confirmations for one CONNECTOR and LINE merged into one call (1 = off)."
    )
    share_max_rate: float = Field(
        50.0,
        ge=0.0,
        description="Portals limited to at most this many requests/s queue their calls pool-wide in Redis, "
        "so any worker's request carries any worker's jobs (0 = each worker packs only its own).",
    )
    permit_wait: float = Field(
        10.0, description="Longest a job waits in a worker slot for its portal's permit; longer → retry."
    )

    # --- Retries and dead letters ---
    max_failures: int = Field(
        8, ge=1, description="Transient failures (5xx, network) before a dead letter (see transient_window)."
    )
    transient_window: float = Field(
        600.0,
        ge=0.0,
        description="A job's transient failures end it only once this many seconds have passed since its first: "
        "a portal's bad minutes delay jobs, a portal that keeps failing dead-letters them.",
    )
    backoff_base: float = Field(1.0, description="First transient backoff in seconds (doubles, full jitter).")
    backoff_max: float = Field(60.0, description="Cap of any retry countdown, in seconds.")
    status_ranks: bool = Field(
        True,
        description="Status reports rank queued < sent < delivered/undelivered/failed: a message that reached a "
        "final status never goes back, whatever order its reports arrive in (README: Ordering).",
    )
    clock_skew: float = Field(
        300.0,
        ge=0.0,
        description="Seconds a job's `at` may lie ahead of the producer's clock; later is refused (422), so that "
        "a report from the future cannot freeze its message (README: Ordering).",
    )
    job_max_age: float = Field(86400.0, description="A job older than this is dead-lettered, whatever the cause.")
    ledger_ttl: float = Field(
        7 * 86400.0, description="How long finished job records are kept (dead letters stay until handled)."
    )
    ledger_ttl_applied: float = Field(
        86400.0, description="A job applied on its first run keeps a packed record (~50 bytes) for one to two of this."
    )
    report_lateness: float = Field(
        86400.0,
        gt=0.0,
        description="How late a report may be enqueued after the last report or send of its message (or sender "
        "field, or dialog) and still be recognised as older than a newer one; ordering state is kept the longer "
        "of this and job_max_age + permit_wait.",
    )

    # --- Celery worker ---
    visibility_timeout: int = Field(
        600, description="Broker redelivery timeout; must exceed backoff_max + the longest job run."
    )
    task_events: bool = Field(
        False,
        description="Send Celery task events at all times. Flower turns them on by itself every 5 s while it "
        "runs; always-on events add a publish per job step to every worker's work.",
    )
    worker_concurrency: int = Field(
        128, ge=1, description="Threads per worker process; ≥ 50 per portal busy at once, for full batches."
    )
    worker_heartbeat: float = Field(
        1.0, gt=0.0, description="Seconds between a worker's heartbeats (the messages it holds, in Redis)."
    )
    worker_dead_after: float = Field(
        8.0,
        gt=0.0,
        description="A worker silent this long is gone: its unacknowledged messages go back to the queue "
        "(docs/reliability.md: dead-worker recovery). Must exceed worker_heartbeat a few times over.",
    )

    # --- Observability ---
    metrics_dir: str = Field(
        "",
        description="Directory where this host's worker processes keep Prometheus metrics (multiprocess mode) "
        "and `b24q metrics` reads them; empty = workers record none. PROMETHEUS_MULTIPROC_DIR works too.",
    )
    metrics_portal_labels: int = Field(
        200,
        ge=0,
        description='Portals that get their own `portal` label in metrics; later ones count as portal="(other)"; '
        '0 turns the label off (portal="(all)").',
    )

    # --- Secrets at rest (docs/reliability.md) ---
    token_keys: SecretStr = Field(
        SecretStr(""),
        description="Fernet keys (comma-separated) encrypting tokens and webhook URLs in Redis; the first "
        "encrypts, all decrypt; empty = plaintext. `b24q portal genkey|rekey`.",
    )

    # --- Lost-message reconciler (docs/reliability.md) ---
    reconcile_interval: float = Field(
        60.0, ge=0.0, description="Seconds between checks for open jobs whose message the broker lost; 0 = off."
    )
    reconcile_grace: float = Field(
        60.0, ge=1.0, description="An open job is checked only after this many seconds without progress."
    )

    # --- The application side: install and event handlers (edges/http, README: application back end) ---
    http_host: str = Field("127.0.0.1", description="Address `b24q serve` listens on.")
    http_port: int = Field(8024, ge=0, le=65535, description="Port `b24q serve` listens on (0: any free port).")
    http_public_url: str = Field(
        "",
        description="This app's URL as Bitrix24 reaches it (e.g. https://b24q.example.com); the event handler "
        "bound at install is {http_public_url}/b24/events. Empty: no events are bound.",
    )
    http_max_body: int = Field(
        1_048_576, ge=1024, description="Largest request body the HTTP app reads, in bytes (413 above it)."
    )
    portal_hosts: str = Field(
        ",".join(f"*.bitrix24.{zone}" for zone in BITRIX24_CLOUD_ZONES),
        description="Comma-separated host patterns a portal's client_endpoint may name when an install registers "
        "it or a redirect moves it; `*` stands for one whole label (`*.bitrix24.com` is `acme.bitrix24.com`, "
        "not `a.b.bitrix24.com` nor `acme.bitrix24.com.evil.com`). The default: Bitrix24's cloud zones; add your "
        "self-hosted portals' hosts.",
    )
    event_verify_per_minute: float = Field(
        6.0,
        ge=0.0,
        description="app.info calls per portal per minute that install and update events whose token b24q does "
        "not know yet may cause (docs/security.md); events over it are refused 429 without a call. 0: no budget.",
    )
    event_verify_burst: int = Field(3, ge=1, description="Verification calls a portal may get at once.")
    http_event_concurrency: int = Field(
        8,
        ge=1,
        description="Threads of `b24q serve` (per process) handling /b24 events at once; more wait, up to 8 times "
        "as many, then 503: /v1, /healthz and /metrics never queue behind events.",
    )
    providers: str = Field(
        "",
        description='SMS providers every portal should have, as JSON: [{"code", "name", "handler", '
        '"description"?}]; registered with messageservice.sender.add at install and after every app update.',
    )

    # --- The HTTP intake: producers in any language (edges/http/intake.py, README: producing over HTTP) ---
    api_keys: str = Field(
        "",
        description="API keys of the /v1 routes, as SHA-256 digests (never the keys): comma-separated "
        "`sha256hex[:portal1|portal2]` entries, the portals limiting what the key may post and read, or "
        "`sha256hex:*admin` for an operator's key (the console at /console; every portal on /v1); several at once "
        "for rotation. `b24q apikey new [--admin]` prints a key and its entry. Empty: /v1 answers 401 to everything.",
    )
    http_rate: float = Field(
        50.0, ge=0.0, description="Requests per second each API key may make to /v1 (0: unlimited); 429 above it."
    )
    http_burst: int = Field(100, ge=1, description="Requests an API key may make at once before http_rate applies.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="How workers, `b24q serve` and the CLI write their log lines on stderr: `text` (time, level, "
        "logger, message) or `json` (one object per line: time, level, logger, message, exc), for log shippers.",
    )

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str) -> str:
        if value.strip() and not value.strip().startswith(("amqp://", "amqps://")):
            raise ValueError("must be empty (the Redis of B24Q_REDIS_URL) or an amqp:// or amqps:// URL (RabbitMQ)")
        return value.strip()

    @property
    def ordering_retention(self) -> float:
        """How long a state key's ordering entry must outlive its last write (a job's stamp or send). Every stamp
        rewrites the entries of its job's keys, so an entry must last (1) from a job's stamp to its last gate:
        a job is gated only while alive (`job_max_age` from its record's creation, checked at each run, plus
        `permit_wait` to its gate; a replayed dead letter keeps that time, so an old one is dead-lettered again
        as MAX_AGE before its gate, and one whose record expired takes a new place), and (2) from a key's last
        report or send to a late report's stamp (`report_lateness`)."""
        return max(self.job_max_age + self.permit_wait, self.report_lateness)

    @property
    def on_rabbitmq(self) -> bool:
        """Whether the jobs' messages live in RabbitMQ (B24Q_BROKER_URL), not in the Redis of the state."""
        return bool(self.broker_url)

    @field_validator("api_keys")
    @classmethod
    def _api_key_entries(cls, value: str) -> str:
        for number, entry in enumerate((e.strip() for e in value.split(",") if e.strip()), 1):
            if not API_KEY_ENTRY.fullmatch(entry):
                raise ValueError(
                    f"entry {number} is not sha256hex[:portal1|portal2] or sha256hex:*admin"
                    " (`b24q apikey new` prints one)"
                )
        return value

    @field_validator("providers")
    @classmethod
    def _provider_list(cls, value: str) -> str:
        """Refused when the settings load, not when an app update needs them (each entry's fields are checked
        as a sender-add job when it is enqueued)."""
        if value.strip():
            try:
                parsed = json.loads(value)
            except ValueError:
                raise ValueError('must be JSON: [{"code", "name", "handler", "description"?}]') from None
            if not isinstance(parsed, list) or not all(isinstance(p, dict) and p.get("code") for p in parsed):
                raise ValueError('must be a JSON list of {"code", "name", "handler", "description"?}')
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
