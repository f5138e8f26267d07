"""Choose the exchange adapter from EXCHANGE (paper by default, else a ccxt id), and the
trading-rate budget that goes with it (Kraken only)."""

from __future__ import annotations

from base.clock import Clock
from base.setting_values import parse_balances
from base.settings import Settings, SettingsError
from storage.keys import Keys
from storage.redis import AnyRedis
from trading.exchange import Exchange
from trading.kraken_limits import TIERS, RateBudget


def make_rate_budget(settings: Settings, redis: AnyRedis, keys: Keys) -> RateBudget | None:
    """mmops' share of Kraken's per-pair counters (KRAKEN_TIER, EXCHANGE_RATE_RESERVE_PERCENT);
    None for an exchange without that model (paper, other ccxt exchanges)."""
    if settings.exchange != "kraken":
        return None
    return RateBudget(
        redis,
        tier=TIERS[settings.kraken_tier],
        reserve_percent=settings.exchange_rate_reserve_percent,
        prefix=keys.prefix,
        exchange=settings.exchange,
    )


def check_pending_settle(pending_settle_ms: int, worst_call_ms: int) -> None:
    """A claimed step must not be re-sent while its first place call may still send.

    Raises SettingsError naming TP_PENDING_SETTLE_MS when it is shorter than the
    adapter's worst-case place call (CcxtExchange.worst_call_ms).
    """
    if pending_settle_ms < worst_call_ms:
        raise SettingsError(
            f"TP_PENDING_SETTLE_MS: {pending_settle_ms} ms is shorter than one exchange place "
            f"call can last ({worst_call_ms} ms: tries x timeout, look-ups and backoff); "
            f"set it to at least {worst_call_ms}"
        )


def make_exchange(
    settings: Settings,
    redis: AnyRedis,
    keys: Keys,
    clock: Clock,
    *,
    budget: RateBudget | None = None,
) -> Exchange:
    maker_fee = (
        None if settings.tp_maker_fee_percent is None else settings.tp_maker_fee_percent / 100
    )
    if settings.exchange == "paper":
        from decimal import Decimal

        from trading.paper import PaperExchange, PaperFaults

        faults = (
            PaperFaults(dict(settings.paper_faults), seed=settings.paper_faults_seed)
            if settings.paper_faults
            else None  # the default: no draw at all on the hot path
        )
        return PaperExchange(
            redis=redis,
            keys=keys,
            maker_fee=maker_fee if maker_fee is not None else Decimal("0.0025"),
            starting_balances=parse_balances("PAPER_BALANCES", settings.paper_balances),
            clock_ms=clock.now_ms,
            faults=faults,
        )
    from trading.breaker import CircuitBreaker
    from trading.ccxt_exchange import CcxtExchange, has_sandbox

    try:
        sandbox_known = has_sandbox(settings.exchange)
    except ValueError:
        raise SettingsError(
            f"EXCHANGE: expected paper or a ccxt exchange id, got {settings.exchange!r}"
        ) from None
    if settings.exchange_sandbox and not sandbox_known:
        raise SettingsError(
            f"EXCHANGE_SANDBOX: ccxt has no sandbox for {settings.exchange}; unset it "
            "(or point EXCHANGE_API_URL at a test endpoint)"
        )

    async def on_open(message: str) -> None:
        await redis.xadd(
            keys.alerts,
            {"kind": "circuit_open", "message": message, "exchange": settings.exchange},
            maxlen=settings.alerts_maxlen,
            approximate=True,
        )

    return CcxtExchange(
        exchange_id=settings.exchange,
        api_key=settings.exchange_api_key,
        api_secret=settings.exchange_api_secret,
        maker_fee=maker_fee,
        api_url=settings.exchange_api_url,
        sandbox=settings.exchange_sandbox,
        breaker=CircuitBreaker(on_open=on_open),
        on_rate_limited=None if budget is None else budget.saturate,
    )
