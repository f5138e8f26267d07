"""Choose the exchange adapter from EXCHANGE (paper by default, else a ccxt id)."""

from __future__ import annotations

import redis.asyncio as aioredis

from base.clock import Clock
from base.settings import Settings, parse_balances
from storage.keys import Keys
from trading.exchange import Exchange


def make_exchange(settings: Settings, redis: aioredis.Redis, keys: Keys, clock: Clock) -> Exchange:
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
    from trading.ccxt_exchange import CcxtExchange

    async def on_open(message: str) -> None:
        await redis.xadd(
            keys.alerts, {"kind": "circuit_open", "message": message, "exchange": settings.exchange}
        )

    return CcxtExchange(
        exchange_id=settings.exchange,
        api_key=settings.exchange_api_key,
        api_secret=settings.exchange_api_secret,
        maker_fee=maker_fee,
        breaker=CircuitBreaker(on_open=on_open),
    )
