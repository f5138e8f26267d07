"""Settings (docs/contract.md §5): defaults, one-line errors naming the variable, secrets kept out
of repr() and messages — in process and through the real `mmops` command."""

from __future__ import annotations

import subprocess
from dataclasses import fields
from decimal import Decimal

import pytest

from base.settings import Settings, SettingsError, redact_url
from tests.conftest import MMOPS

# field -> (environment variable, junk it must reject)
POSITIVE_INT = ("abc", "1.5", "0", "-3", "1e3")
POSITIVE_DECIMAL = ("abc", "NaN", "Infinity", "0", "-1")
ANY_DECIMAL = ("abc", "NaN", "-Infinity", "1.2.3")
BOOL = ("maybe", "2", "enabled")
NUMERIC_AND_BOOL: dict[str, tuple[str, tuple[str, ...]]] = {
    "dry_run": ("DRY_RUN", BOOL),
    "redis_cluster": ("REDIS_CLUSTER", BOOL),
    "stream_shards": ("MM_STREAM_SHARDS", POSITIVE_INT),
    "emergency_exit": ("EMERGENCY_EXIT", BOOL),
    "batch_size": ("CONSUMER_BATCH_SIZE", POSITIVE_INT),
    "block_ms": ("CONSUMER_BLOCK_MS", POSITIVE_INT),
    "concurrency": ("CONSUMER_CONCURRENCY", POSITIVE_INT),
    "max_deliveries": ("MAX_DELIVERIES", POSITIVE_INT),
    "reclaim_idle_ms": ("RECLAIM_IDLE_MS", POSITIVE_INT),
    "max_entry_bytes": ("MAX_ENTRY_BYTES", POSITIVE_INT),
    "max_pairs": ("MAX_PAIRS", POSITIVE_INT),
    "settlement_max_sessions": ("SETTLEMENT_MAX_SESSIONS", POSITIVE_INT),
    "migration_batch_size": ("MIGRATION_BATCH_SIZE", POSITIVE_INT),
    "migration_pool_size": ("MIGRATION_POOL_SIZE", POSITIVE_INT),
    "takeprofits_maxlen": ("TAKEPROFITS_MAXLEN", POSITIVE_INT),
    "alerts_maxlen": ("ALERTS_MAXLEN", POSITIVE_INT),
    "dead_maxlen": ("DEAD_MAXLEN", POSITIVE_INT),
    "migration_grace_minutes": ("MIGRATION_GRACE_MINUTES", ("abc", "NaN", "-1")),
    "session_retention_days": ("SESSION_RETENTION_DAYS", ("abc", "NaN", "-1")),
    "migration_sync_seconds": ("MIGRATION_SYNC_SECONDS", POSITIVE_DECIMAL),
    "tp_pending_settle_ms": ("TP_PENDING_SETTLE_MS", ("abc", "0.5", "-1")),
    "metrics_port": ("METRICS_PORT", ("abc", "70000", "-1", "80.5")),
    "settlement_interval_minutes": ("SETTLEMENT_INTERVAL_MINUTES", POSITIVE_DECIMAL),
    "settlement_lookback_hours": ("SETTLEMENT_LOOKBACK_HOURS", POSITIVE_DECIMAL),
    "tp_aging_tier_1_hours": ("TP_AGING_TIER_1_HOURS", POSITIVE_DECIMAL),
    "tp_aging_tier_2_hours": ("TP_AGING_TIER_2_HOURS", POSITIVE_DECIMAL),
    "tp_aging_tier_3_hours": ("TP_AGING_TIER_3_HOURS", POSITIVE_DECIMAL),
    "migration_lookback_hours": ("MIGRATION_LOOKBACK_HOURS", POSITIVE_DECIMAL),
    "migration_overdue_minutes": ("MIGRATION_OVERDUE_MINUTES", POSITIVE_DECIMAL),
    "portfolio_daily_loss_limit": ("PORTFOLIO_DAILY_LOSS_LIMIT", POSITIVE_DECIMAL),
    "stream_retention_hours": ("MM_STREAM_RETENTION_HOURS", POSITIVE_DECIMAL),
    "tp_base_target_percent": ("TP_BASE_TARGET_PERCENT", ANY_DECIMAL),
    "tp_tier_2_target_percent": ("TP_TIER_2_TARGET_PERCENT", ANY_DECIMAL),
    "tp_tier_3_target_percent": ("TP_TIER_3_TARGET_PERCENT", ANY_DECIMAL),
    "tp_tier_4_target_percent": ("TP_TIER_4_TARGET_PERCENT", ANY_DECIMAL),
    "tp_maker_fee_percent": ("TP_MAKER_FEE_PERCENT", ("abc", "NaN", "-0.1", "100")),
    "paper_faults_seed": ("PAPER_FAULTS_SEED", ("abc", "1.5", "1e3")),
    "exchange_sandbox": ("EXCHANGE_SANDBOX", BOOL),
    "exchange_rate_reserve_percent": ("EXCHANGE_RATE_RESERVE_PERCENT", ("abc", "NaN", "-1", "100")),
    "exchange_rate_max_wait_ms": ("EXCHANGE_RATE_MAX_WAIT_MS", ("abc", "0.5", "-1")),
}


def test_the_table_covers_every_numeric_and_bool_setting() -> None:
    typed = {
        f.name
        for f in fields(Settings)
        if any(word in str(f.type) for word in ("int", "Decimal", "bool"))
    }
    assert typed == set(NUMERIC_AND_BOOL)


@pytest.mark.parametrize(
    ("name", "raw"),
    [(env, raw) for env, bad in NUMERIC_AND_BOOL.values() for raw in bad],
)
def test_junk_is_rejected_in_one_line_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: raw})
    message = str(caught.value)
    assert message.startswith(f"{name}: "), message
    assert "\n" not in message


@pytest.mark.parametrize(("field", "name"), [(f, env) for f, (env, _) in NUMERIC_AND_BOOL.items()])
def test_each_variable_is_read(field: str, name: str) -> None:
    """The same variables accept a good value (so the rejections above are not accidental)."""
    good = {
        "dry_run": "true",
        "redis_cluster": "true",
        "emergency_exit": "yes",
        "exchange_sandbox": "true",
        "metrics_port": "9100",
        "tp_maker_fee_percent": "0.16",
        "tp_aging_tier_1_hours": "0.5",
        "tp_aging_tier_2_hours": "5",
        "tp_aging_tier_3_hours": "13",
        "tp_pending_settle_ms": "0",
    }.get(field, "7")
    value = getattr(Settings.from_env({name: f"  {good} "}), field)
    expected: object = {"true": True, "yes": True}.get(good)
    if expected is None:
        expected = Decimal(good) if isinstance(value, Decimal) else int(good)
    assert value == expected


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"LOG_LEVEL": "VERBOSE"}, "LOG_LEVEL"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://127.0.0.1:port/0"}, "REDIS_URL"),
        ({"DATABASE_URL": "mysql://db/x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://db:99999/x"}, "DATABASE_URL"),
        ({"EXCHANGE": "kraken"}, "EXCHANGE_API_KEY"),
        ({"PAPER_BALANCES": "USD=lots"}, "PAPER_BALANCES"),
        ({"PAPER_BALANCES": "USD=-5"}, "PAPER_BALANCES"),
        ({"TP_AGING_TIER_1_HOURS": "5"}, "TP_AGING_TIER_1_HOURS"),
        ({"PAPER_FAULTS": "place_5xx=0.5,meteor=0.1"}, "PAPER_FAULTS"),
        ({"PAPER_FAULTS": "place_5xx=1.5"}, "PAPER_FAULTS"),
        ({"PAPER_FAULTS": "place_5xx=-0.1"}, "PAPER_FAULTS"),
        ({"PAPER_FAULTS": "place_5xx=NaN"}, "PAPER_FAULTS"),
        ({"PAPER_FAULTS": "place_5xx"}, "PAPER_FAULTS"),
        ({"PAPER_FAULTS": "place_5xx=often"}, "PAPER_FAULTS"),
        ({"PAPER_FAULTS": "place_5xx=0.6,post_only=0.5"}, "PAPER_FAULTS"),  # one call > 1
        ({"PAPER_FAULTS": "rate_limit=0.5,fetch_5xx=0.6"}, "PAPER_FAULTS"),
        ({"PAPER_FAULTS": "place_5xx=0.1", "EXCHANGE": "kraken", "DRY_RUN": "1"}, "PAPER_FAULTS"),
        ({"KRAKEN_TIER": "gold"}, "KRAKEN_TIER"),
        ({"EXCHANGE_API_URL": "ftp://host/x"}, "EXCHANGE_API_URL"),
        ({"EXCHANGE_API_URL": "api.kraken.com"}, "EXCHANGE_API_URL"),
        ({"EXCHANGE_API_URL": "http://host:99999"}, "EXCHANGE_API_URL"),
        ({"EXCHANGE_API_URL": "https://host/?x=1"}, "EXCHANGE_API_URL"),
    ],
)
def test_other_settings_are_checked(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(f"{name}: ") or str(caught.value).startswith(name)
    assert "\n" not in str(caught.value)


def test_defaults_match_the_design() -> None:
    s = Settings.from_env({})
    assert s.exchange == "paper"
    assert s.dry_run is False
    assert s.log_level == "INFO"
    assert s.stream == "mm:events"
    assert s.key_prefix == ""
    assert s.settlement_interval_minutes == 3
    assert s.settlement_lookback_hours == 24
    assert s.settlement_max_sessions == 100
    assert s.tp_base_target_percent == Decimal("0.5")
    assert s.tier_hours == (1, 4, 12)
    assert s.tier_targets == (Decimal("0.005"), Decimal("0.003"), 0, Decimal("-0.001"))
    assert s.tp_maker_fee_percent is None  # the market's maker fee
    assert s.migration_batch_size == 10
    assert s.migration_lookback_hours == 48
    assert s.emergency_exit is False
    assert s.portfolio_daily_loss_limit is None
    assert s.metrics_port is None
    assert s.interval_seconds == 180.0
    assert (s.kraken_tier, s.exchange_rate_reserve_percent) == ("starter", 50)
    assert (s.exchange_api_url, s.exchange_sandbox) == (None, False)


def test_exchange_endpoint_settings() -> None:
    s = Settings.from_env(
        {"KRAKEN_TIER": "Pro", "EXCHANGE_API_URL": "https://user:hunter2@proxy.example:8443/kr"}
    )
    assert s.kraken_tier == "pro"
    assert s.exchange_api_url == "https://user:hunter2@proxy.example:8443/kr"
    assert "hunter2" not in repr(s)  # a proxy's password stays out of repr()
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"EXCHANGE_API_URL": "ftp://user:hunter2@proxy.example"})
    assert "hunter2" not in str(caught.value)


def test_paper_faults_are_parsed_into_kinds_and_probabilities() -> None:
    s = Settings.from_env(
        {
            "PAPER_FAULTS": " place_5xx=0.02, place_timeout=0.01,rate_limit=0.01,post_only=0.02,"
            "lost_response=0.01,cancel_5xx=0.02,fetch_5xx=0.99 ",
            "PAPER_FAULTS_SEED": "42",
        }
    )
    assert dict(s.paper_faults) == {
        "place_5xx": 0.02,
        "place_timeout": 0.01,
        "rate_limit": 0.01,
        "post_only": 0.02,
        "lost_response": 0.01,
        "cancel_5xx": 0.02,
        "fetch_5xx": 0.99,
    }
    assert s.paper_faults_seed == 42
    assert Settings.from_env({}).paper_faults == ()  # the default: no faults
    assert Settings.from_env({}).paper_faults_seed is None
    assert Settings.from_env({"PAPER_FAULTS": ""}).paper_faults == ()


def test_log_levels_and_empty_values() -> None:
    assert Settings.from_env({"LOG_LEVEL": "warning"}).log_level == "WARN"
    assert Settings.from_env({"LOG_LEVEL": "trace"}).log_level == "TRACE"
    # an empty variable means "not set", except where empty is meaningful
    assert Settings.from_env({"CONSUMER_BATCH_SIZE": "", "DRY_RUN": " "}).batch_size == 100
    assert Settings.from_env({"MM_KEY_PREFIX": "t1:"}).key_prefix == "t1:"
    assert Settings.from_env({"DRY_RUN": "ON"}).dry_run is True
    assert Settings.from_env({"DRY_RUN": "0"}, dry_run=True).dry_run is True  # overrides win


def test_secrets_are_not_in_repr() -> None:
    s = Settings.from_env(
        {
            "EXCHANGE": "kraken",
            "EXCHANGE_API_KEY": "k3y-abc",
            "EXCHANGE_API_SECRET": "s3cret-xyz",
            "REDIS_URL": "rediss://acl-user:redis-pw@redis.internal:6380/2",
            "DATABASE_URL": "postgresql://mm:pg-pw@db.internal:5432/mm",
            "ALERT_WEBHOOK_URL": "https://hooks.example/services/T0KEN",
        }
    )
    text = repr(s)
    for secret in ("k3y-abc", "s3cret-xyz", "redis-pw", "pg-pw", "T0KEN"):
        assert secret not in text
    assert "rediss://acl-user:***@redis.internal:6380/2" in text
    assert "postgresql://mm:***@db.internal:5432/mm" in text
    # the values themselves are intact
    assert s.exchange_api_secret == "s3cret-xyz"
    assert s.redis_url == "rediss://acl-user:redis-pw@redis.internal:6380/2"


def test_settings_errors_do_not_show_passwords() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"REDIS_URL": "http://user:s3cret@h:6379"})
    assert "s3cret" not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:s3cret@127.0.0.1:1/0", "redis://user:***@127.0.0.1:1/0"),
        (
            "rediss://acl-user:s3cret@cache.example:6380/2",
            "rediss://acl-user:***@cache.example:6380/2",
        ),
        ("redis://:s3cret@127.0.0.1:6379", "redis://:***@127.0.0.1:6379"),
        (
            "postgresql://mm:s3cret@db:5432/mm?sslmode=require",
            "postgresql://mm:***@db:5432/mm?sslmode=require",
        ),
        ("postgres://mm:s3cret@db/mm", "postgres://mm:***@db/mm"),
        (
            "postgresql://mm@db/mm?password=s3cret&sslmode=disable",
            "postgresql://mm@db/mm?password=***&sslmode=disable",
        ),
        ("redis://u:s3cret@[::1]:6379/0", "redis://u:***@[::1]:6379/0"),
        ("redis://u:s3#cr@t@h:6379/0", "redis://u:***@h:6379/0"),  # unescaped '#' and '@'
        ("redis://u:s3cret@h:port/0", "redis://u:***@h:port/0"),  # unparseable port
        ("unix://:s3cret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgresql://postgres@/db?host=/tmp/pg",
        "redis://user@h:6379/0",
    ],
)
def test_redact_url_leaves_urls_without_a_password(url: str) -> None:
    assert redact_url(url) == url


# --- the real command ------------------------------------------------------------------
def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MMOPS, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_coverage_with_a_bad_setting_exits_with_one_line(env: dict[str, str]) -> None:
    done = _run({**env, "DRY_RUN": "maybe"}, "coverage", "--drain")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "DRY_RUN" in lines[0] and "'maybe'" in lines[0]
    assert done.stdout == ""


def test_coverage_with_bad_paper_faults_exits_with_one_line(env: dict[str, str]) -> None:
    done = _run({**env, "PAPER_FAULTS": "place_5xx=2"}, "coverage", "--drain")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "PAPER_FAULTS: " in lines[0], lines[0]
    assert "'place_5xx=2'" in lines[0]


def test_coverage_with_an_unreachable_redis_names_the_url_only(env: dict[str, str]) -> None:
    done = _run({**env, "REDIS_URL": "redis://user:s3cret@127.0.0.1:1/0"}, "coverage")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "redis://user:***@127.0.0.1:1/0" in lines[0]
    assert "unreachable" in lines[0]
    assert "s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_db_upgrade_with_an_unreachable_postgres_names_the_url_only(env: dict[str, str]) -> None:
    done = _run({**env, "DATABASE_URL": "postgresql://mm:s3cret@127.0.0.1:1/mm"}, "db", "upgrade")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "postgresql://mm:***@127.0.0.1:1/mm" in lines[0]
    assert "s3cret" not in done.stderr + done.stdout


# --- operator traps (issue 11) ------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "hint"),
    [("krakn", " (did you mean kraken?)"), ("Kraken", " (did you mean kraken?)"), ("zzzz", "")],
)
def test_an_unknown_exchange_is_one_line_naming_exchange(raw: str, hint: str) -> None:
    """Checked against ccxt.exchanges at start, before the API key check."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"EXCHANGE": raw})
    assert str(caught.value) == f"EXCHANGE: {raw!r} is not paper or a ccxt exchange id{hint}"


def test_every_ccxt_id_and_paper_are_exchanges() -> None:
    import ccxt

    for exchange in ("paper", "kraken", *ccxt.exchanges[:5]):
        assert Settings.from_env({"EXCHANGE": exchange, "DRY_RUN": "1"}).exchange == exchange


def test_consumer_block_ms_must_return_well_before_the_socket_timeout() -> None:
    from base.settings import MAX_BLOCK_MS, REDIS_SOCKET_TIMEOUT_S
    from storage.redis import client

    # the bound follows the client's own socket timeout
    conn = client("redis://127.0.0.1:1/0")
    assert conn.connection_pool.connection_kwargs["socket_timeout"] == REDIS_SOCKET_TIMEOUT_S
    assert MAX_BLOCK_MS * 2 == REDIS_SOCKET_TIMEOUT_S * 1000
    assert Settings.from_env({"CONSUMER_BLOCK_MS": str(MAX_BLOCK_MS)}).block_ms == MAX_BLOCK_MS
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"CONSUMER_BLOCK_MS": "12000"})
    assert str(caught.value).startswith(f"CONSUMER_BLOCK_MS: expected at most {MAX_BLOCK_MS} ")
    assert "got 12000" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "hooks.slack.com/services/T000/B000/XyZs3cretT0ken",
        "ftp://hooks.slack.com/services/T000/B000/XyZs3cretT0ken",
        "https:///services/T000/B000/XyZs3cretT0ken",
        "https://hooks.slack.com:99999/services/T000/B000/XyZs3cretT0ken",
        "//hooks.slack.com/services/T000/B000/XyZs3cretT0ken",
    ],
)
def test_a_bad_webhook_url_is_named_without_its_token(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"ALERT_WEBHOOK_URL": url})
    message = str(caught.value)
    assert message.startswith("ALERT_WEBHOOK_URL: expected an http:// or https:// URL with a host")
    assert "XyZs3cretT0ken" not in message and "T000" not in message


def test_tp_targets_must_keep_a_positive_price() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"TP_TIER_4_TARGET_PERCENT": "-100"})
    assert str(caught.value).startswith(
        "TP_TIER_4_TARGET_PERCENT: expected a percentage above -100"
    )
    assert Settings.from_env({"TP_TIER_4_TARGET_PERCENT": "-99.9"}).tier_targets[3] == Decimal(
        "-0.999"
    )


def test_secrets_lists_every_secret_value() -> None:
    s = Settings.from_env(
        {
            "EXCHANGE": "kraken",
            "EXCHANGE_API_KEY": "k3y-abc",
            "EXCHANGE_API_SECRET": "s3cret-xyz",
            "EXCHANGE_API_URL": "https://proxy:px-pw@proxy.internal",
            "REDIS_URL": "rediss://acl-user:redis%40pw@redis.internal:6380/2",
            "DATABASE_URL": "postgresql://mm@db.internal:5432/mm?password=pg-pw",
            "ALERT_WEBHOOK_URL": "https://hooks.example/services/T0KEN1/B0KEN2/t0kenlast",
        }
    )
    secrets = set(s.secrets())
    for value in ("k3y-abc", "s3cret-xyz", "px-pw", "redis%40pw", "redis@pw", "pg-pw"):
        assert value in secrets
    assert "/services/T0KEN1/B0KEN2/t0kenlast" in secrets
    assert "t0kenlast" in secrets
    # names that are not secret are not redacted everywhere
    assert not secrets & {"hooks.example", "services", "acl-user", "mm", "proxy.internal"}


def test_env_secrets_reads_even_invalid_settings() -> None:
    from base.settings import env_secrets

    secrets = env_secrets(
        {"ALERT_WEBHOOK_URL": "hooks.slack.com/services/T/B/s3cretTok", "DRY_RUN": "maybe"}
    )
    assert "hooks.slack.com/services/T/B/s3cretTok" in secrets


def test_an_unknown_exchange_stops_the_real_command_in_one_line(env: dict[str, str]) -> None:
    for command in (("coverage", "--drain"), ("status",)):
        done = _run({**env, "EXCHANGE": "krakn"}, *command)
        assert done.returncode == 2, done.stderr
        assert done.stderr == (
            "mmops: EXCHANGE: 'krakn' is not paper or a ccxt exchange id (did you mean kraken?)\n"
        )


def test_a_long_consumer_block_stops_the_real_command_in_one_line(env: dict[str, str]) -> None:
    done = _run({**env, "CONSUMER_BLOCK_MS": "15000"}, "coverage")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("mmops: CONSUMER_BLOCK_MS: expected at most 5000 ")
    assert len(done.stderr.splitlines()) == 1


def test_a_webhook_url_without_scheme_stops_the_real_command_without_its_token(
    env: dict[str, str],
) -> None:
    url = "hooks.slack.com/services/T000/B000/XyZs3cretT0ken"
    done = _run({**env, "ALERT_WEBHOOK_URL": url}, "sweeper")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("mmops: ALERT_WEBHOOK_URL: expected an http:// or https:// URL")
    assert len(done.stderr.splitlines()) == 1
    assert "XyZs3cretT0ken" not in done.stdout + done.stderr
