"""Settings: read once from the environment into a frozen object, validated up front.

A bad value stops the process with one line naming the setting and what it expects
(SettingsError). Secrets are kept out of repr() and every message.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

from base.secrets import MIN_SECRET_CHARS, url_passwords, webhook_secrets
from base.secrets import redact_url as redact_url
from base.setting_values import SettingsError as SettingsError
from base.setting_values import (
    _bool,
    _bounded,
    _decimal,
    _int,
    _level,
    _non_negative_decimal,
    _percent_below_100,
    _port,
    _positive_decimal,
    _positive_int,
    _str,
    _tier,
    check_paper_faults,
    parse_balances,
    parse_paper_faults,
)

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")
# The Redis client's socket timeout (storage/redis.py): a reply slower than this is an error.
REDIS_SOCKET_TIMEOUT_S = 10
# A blocking XREADGROUP must come back well before that timeout, or every idle read ends
# in a socket timeout that looks like an unreachable server: at most half of it.
MAX_BLOCK_MS = REDIS_SOCKET_TIMEOUT_S * 1000 // 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    stream: str = "mm:events"
    stream_shards: int = 1  # MM_STREAM_SHARDS: the input stream as N streams (contract §6)
    redis_cluster: bool = False  # REDIS_CLUSTER: REDIS_URL names any node of a Redis Cluster
    key_prefix: str = ""
    exchange: str = "paper"
    exchange_api_key: str | None = field(default=None, repr=False)
    exchange_api_secret: str | None = field(default=None, repr=False)
    exchange_api_url: str | None = None  # replaces the REST base URL (stand-in, proxy, region)
    exchange_sandbox: bool = False
    # the exchange's trading-rate counter (Kraken), shared with the trader
    kraken_tier: str = "starter"
    exchange_rate_reserve_percent: Decimal = Decimal(50)
    exchange_rate_max_wait_ms: int = 30_000
    dry_run: bool = False
    log_level: str = "INFO"
    consumer_name: str = ""
    # consumer runtime
    batch_size: int = 100
    block_ms: int = 1000
    concurrency: int = 64
    max_deliveries: int = 5
    reclaim_idle_ms: int = 60_000
    max_entry_bytes: int = 4096
    max_pairs: int = 500  # distinct pairs one session may trade (storage/session_pairs.py)
    # sweeper
    settlement_interval_minutes: Decimal = Decimal(3)
    settlement_lookback_hours: Decimal = Decimal(24)
    settlement_max_sessions: int = 100
    session_log_dir: str = "session-logs"
    # take-profit pricing (percent)
    tp_base_target_percent: Decimal = Decimal("0.5")
    tp_tier_2_target_percent: Decimal = Decimal("0.3")
    tp_tier_3_target_percent: Decimal = Decimal("0")
    tp_tier_4_target_percent: Decimal = Decimal("-0.1")
    tp_aging_tier_1_hours: Decimal = Decimal(1)
    tp_aging_tier_2_hours: Decimal = Decimal(4)
    tp_aging_tier_3_hours: Decimal = Decimal(12)
    tp_maker_fee_percent: Decimal | None = None
    tp_pending_settle_ms: int | None = None  # None: derived from the exchange's worst call
    paper_balances: str = ""
    paper_faults: tuple[tuple[str, float], ...] = ()  # (kind, probability), chaos runs only
    paper_faults_seed: int | None = None
    # migration
    migration_batch_size: int = 10
    migration_pool_size: int = 8  # PostgreSQL connections of the migrator = its lanes at once
    migration_lookback_hours: Decimal = Decimal(48)
    migration_overdue_minutes: Decimal = Decimal(15)
    migration_grace_minutes: Decimal = Decimal(10)  # wait this long for fills the end counted
    migration_sync_seconds: Decimal = Decimal(5)  # later changes reach PostgreSQL within this
    # retention (docs/contract.md §3 Retention)
    session_retention_days: Decimal = Decimal(7)
    takeprofits_maxlen: int = 100_000
    alerts_maxlen: int = 10_000
    dead_maxlen: int = 10_000
    # risk
    portfolio_daily_loss_limit: Decimal | None = None
    emergency_exit: bool = False
    # operations
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    alert_webhook_url: str | None = field(default=None, repr=False)  # may carry a token
    stream_retention_hours: Decimal | None = None

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            if f.repr:
                value = getattr(self, f.name)
                if f.name in ("redis_url", "database_url", "exchange_api_url") and value:
                    value = redact_url(value)
                shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build from the environment (or `env`); keyword overrides win. Raises SettingsError."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = _ENV_NAMES.get(f.name, f.name.upper())
            raw = source.get(name)
            if raw is None or (raw.strip() == "" and f.name not in _EMPTY_ALLOWED):
                continue
            parse = _PARSERS.get(f.name, _str)
            values[f.name] = parse(name, raw.strip())
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        _exchange_id(self.exchange)
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(
                f"LOG_LEVEL: expected one of {' '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                "REDIS_URL: expected redis://, rediss:// or unix://, got "
                f"{redact_url(self.redis_url)!r}"
            )
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            raise SettingsError(
                f"DATABASE_URL: expected postgresql://..., got {redact_url(self.database_url)!r}"
            )
        for name, url in (("REDIS_URL", self.redis_url), ("DATABASE_URL", self.database_url)):
            try:
                urlsplit(url).port  # noqa: B018 - raises ValueError on a bad port
            except ValueError as exc:
                raise SettingsError(f"{name}: {exc} in {redact_url(url)!r}") from None
        if self.redis_cluster:
            _check_cluster_url(self.redis_url)
        if self.stream_shards < 1:
            raise SettingsError(
                f"MM_STREAM_SHARDS: expected a number >= 1, got {self.stream_shards}"
            )
        if self.block_ms > MAX_BLOCK_MS:
            raise SettingsError(
                f"CONSUMER_BLOCK_MS: expected at most {MAX_BLOCK_MS} (a blocking read must return "
                f"well before the Redis client's {REDIS_SOCKET_TIMEOUT_S} s socket timeout), "
                f"got {self.block_ms}"
            )
        if self.alert_webhook_url is not None:
            _check_webhook_url(self.alert_webhook_url)
        for name, percent in zip(_TARGET_NAMES, self.target_percents, strict=True):
            if percent <= -100:
                raise SettingsError(f"{name}: expected a percentage above -100, got {percent}")
        tiers = (self.tp_aging_tier_1_hours, self.tp_aging_tier_2_hours, self.tp_aging_tier_3_hours)
        if not tiers[0] < tiers[1] < tiers[2]:
            raise SettingsError(
                "TP_AGING_TIER_1_HOURS < TP_AGING_TIER_2_HOURS < TP_AGING_TIER_3_HOURS must hold"
            )
        if (
            self.exchange != "paper"
            and not self.dry_run
            and not (self.exchange_api_key and self.exchange_api_secret)
        ):
            raise SettingsError(
                f"EXCHANGE_API_KEY: required with EXCHANGE={self.exchange} "
                "(and EXCHANGE_API_SECRET)"
            )
        if (
            self.tp_maker_fee_percent is not None
            and not Decimal(0) <= self.tp_maker_fee_percent < 100
        ):
            raise SettingsError("TP_MAKER_FEE_PERCENT: expected a percentage from 0 to 100")
        parse_balances("PAPER_BALANCES", self.paper_balances)
        check_paper_faults("PAPER_FAULTS", self.paper_faults)
        if self.paper_faults and self.exchange != "paper":
            raise SettingsError(f"PAPER_FAULTS: only with EXCHANGE=paper, not {self.exchange}")
        self._validate_exchange()

    def _validate_exchange(self) -> None:
        _tier("KRAKEN_TIER", self.kraken_tier)
        _percent_below_100("EXCHANGE_RATE_RESERVE_PERCENT", str(self.exchange_rate_reserve_percent))
        if self.exchange_api_url is None:
            return
        shown = redact_url(self.exchange_api_url)
        try:
            parts = urlsplit(self.exchange_api_url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise SettingsError(f"EXCHANGE_API_URL: {exc} in {shown!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(
                f"EXCHANGE_API_URL: expected http(s)://host[:port][/path], got {shown!r}"
            )
        if parts.query or parts.fragment:
            raise SettingsError(f"EXCHANGE_API_URL: no query or fragment allowed, got {shown!r}")

    @property
    def consumer(self) -> str:
        return self.consumer_name or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def tier_hours(self) -> tuple[Decimal, Decimal, Decimal]:
        return (self.tp_aging_tier_1_hours, self.tp_aging_tier_2_hours, self.tp_aging_tier_3_hours)

    @property
    def target_percents(self) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        return (
            self.tp_base_target_percent,
            self.tp_tier_2_target_percent,
            self.tp_tier_3_target_percent,
            self.tp_tier_4_target_percent,
        )

    @property
    def tier_targets(self) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        """Net targets as fractions (0.005 = 0.5 %), youngest tier first."""
        return tuple(p.scaleb(-2) for p in self.target_percents)  # type: ignore[return-value]

    def secrets(self) -> tuple[str, ...]:
        """Every secret value these settings hold, in the forms a message may show them:
        the exchange's key and secret, the passwords of REDIS_URL, DATABASE_URL and
        EXCHANGE_API_URL, and ALERT_WEBHOOK_URL's path and query (Slack and Discord put
        the token there). base/logs.py redacts them from every log line and CLI error."""
        found: list[str] = [s for s in (self.exchange_api_key, self.exchange_api_secret) if s]
        for url in (self.redis_url, self.database_url, self.exchange_api_url):
            if url:
                found += url_passwords(url)
        if self.alert_webhook_url:
            found += webhook_secrets(self.alert_webhook_url)
        out: dict[str, None] = {}
        for value in found:
            for form in (value, unquote(value)):
                if len(form) >= MIN_SECRET_CHARS:
                    out[form] = None
        return tuple(out)

    @property
    def interval_seconds(self) -> float:
        return float(self.settlement_interval_minutes * 60)


_SECRET_HOLDERS = (
    "redis_url",
    "database_url",
    "exchange_api_key",
    "exchange_api_secret",
    "exchange_api_url",
    "alert_webhook_url",
)


def env_secrets(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Settings.secrets() of the raw environment, valid or not: what the CLI protects
    before the settings are parsed, so even a bad setting's message cannot show one."""
    source = os.environ if env is None else env
    raw = {f: source.get(_ENV_NAMES.get(f, f.upper()), "").strip() for f in _SECRET_HOLDERS}
    given: dict[str, Any] = {f: v for f, v in raw.items() if v}
    return Settings(**given).secrets()


_TARGET_NAMES = (
    "TP_BASE_TARGET_PERCENT",
    "TP_TIER_2_TARGET_PERCENT",
    "TP_TIER_3_TARGET_PERCENT",
    "TP_TIER_4_TARGET_PERCENT",
)


def _exchange_id(exchange: str) -> None:
    """EXCHANGE is paper or one of ccxt's exchange ids (ccxt.exchanges), checked at start."""
    if exchange == "paper":
        return
    import ccxt  # only for a real exchange: importing ccxt takes a while

    known: list[str] = list(ccxt.exchanges)
    if exchange in known:
        return
    close = difflib.get_close_matches(exchange.lower(), [*known, "paper"], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise SettingsError(f"EXCHANGE: {exchange[:40]!r} is not paper or a ccxt exchange id{hint}")


def _check_webhook_url(url: str) -> None:
    """http(s)://host[:port]/path. The value is never shown: its path or query may be a
    token, and a URL that does not parse says nothing reliable about where that is."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            "ALERT_WEBHOOK_URL: expected an http:// or https:// URL with a host, e.g. "
            "https://hooks.slack.com/services/...; the value is not shown (it may hold a token)"
        )


def _check_cluster_url(url: str) -> None:
    """A cluster node is a TCP address with database 0 (a cluster has no other)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        raise SettingsError(
            "REDIS_URL: a Redis Cluster node needs redis:// or rediss:// (REDIS_CLUSTER=true), "
            f"got {redact_url(url)!r}"
        )
    database = parts.path.strip("/")
    if database not in ("", "0"):
        raise SettingsError(
            "REDIS_URL: a Redis Cluster has only database 0 (REDIS_CLUSTER=true), got "
            f"{redact_url(url)!r}"
        )


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "stream_shards": _positive_int,
    "redis_cluster": _bool,
    "dry_run": _bool,
    "exchange_sandbox": _bool,
    "kraken_tier": _tier,
    "exchange_rate_reserve_percent": _percent_below_100,
    "exchange_rate_max_wait_ms": _bounded(_int, 0, ">= 0"),
    "emergency_exit": _bool,
    "log_level": _level,
    "batch_size": _positive_int,
    "block_ms": _positive_int,
    "concurrency": _positive_int,
    "max_deliveries": _positive_int,
    "reclaim_idle_ms": _positive_int,
    "max_entry_bytes": _positive_int,
    "max_pairs": _positive_int,
    "settlement_interval_minutes": _positive_decimal,
    "settlement_lookback_hours": _positive_decimal,
    "settlement_max_sessions": _positive_int,
    "tp_base_target_percent": _decimal,
    "tp_tier_2_target_percent": _decimal,
    "tp_tier_3_target_percent": _decimal,
    "tp_tier_4_target_percent": _decimal,
    "tp_aging_tier_1_hours": _positive_decimal,
    "tp_aging_tier_2_hours": _positive_decimal,
    "tp_aging_tier_3_hours": _positive_decimal,
    "tp_maker_fee_percent": _non_negative_decimal,
    "tp_pending_settle_ms": _bounded(_int, 0, ">= 0"),
    "migration_batch_size": _positive_int,
    "migration_pool_size": _positive_int,
    "migration_lookback_hours": _positive_decimal,
    "migration_overdue_minutes": _positive_decimal,
    "migration_grace_minutes": _non_negative_decimal,
    "migration_sync_seconds": _positive_decimal,
    "session_retention_days": _non_negative_decimal,
    "takeprofits_maxlen": _positive_int,
    "alerts_maxlen": _positive_int,
    "dead_maxlen": _positive_int,
    "portfolio_daily_loss_limit": _positive_decimal,
    "metrics_port": _port,
    "stream_retention_hours": _positive_decimal,
    "paper_faults": parse_paper_faults,
    "paper_faults_seed": _int,
}

_ENV_NAMES = {
    "stream": "MM_STREAM",
    "stream_shards": "MM_STREAM_SHARDS",
    "key_prefix": "MM_KEY_PREFIX",
    "batch_size": "CONSUMER_BATCH_SIZE",
    "block_ms": "CONSUMER_BLOCK_MS",
    "concurrency": "CONSUMER_CONCURRENCY",
    "reclaim_idle_ms": "RECLAIM_IDLE_MS",
    "max_entry_bytes": "MAX_ENTRY_BYTES",
    "stream_retention_hours": "MM_STREAM_RETENTION_HOURS",
}

_EMPTY_ALLOWED = {"session_log_dir", "key_prefix", "paper_balances"}
