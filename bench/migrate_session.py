"""The migration benchmark's session (bench/migrate.py): N fills over P pairs, built in the
exact layout the coverage worker writes, and written to Redis."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_UP, Decimal

import redis.asyncio as aioredis

from base.clock import iso
from events.schema import Fill
from storage.keys import Keys
from storage.ledger import encode_fill
from trading.client_ids import client_id
from trading.positions import Buy, Close, Position, Step, StepStatus, encode_position

SID = "bench-1"
T0 = 1_763_700_000_000
SYMBOLS = (
    ("BTC/USD", "64000.5", "0.1", "0.0100"),
    ("ETH/USD", "3100.25", "0.01", "0.150"),
    ("SOL/USD", "142.37", "0.01", "3.5"),
    ("XRP/USD", "2.1534", "0.00001", "250"),
    ("ADA/USD", "0.45123", "0.000001", "1200"),
    ("DOGE/USD", "0.163421", "0.0000001", "3000"),
    ("DOT/USD", "3.0741", "0.0001", "150"),
    ("LTC/USD", "88.12", "0.01", "5.25"),
    ("LINK/USD", "13.754", "0.001", "40"),
    ("AVAX/USD", "14.88", "0.01", "33"),
)
TAKER, MAKER, TARGET = Decimal("0.0026"), Decimal("0.0025"), Decimal("0.005")


# --- the session, in the coverage worker's layout ----------------------------------------


@dataclass(frozen=True, slots=True)
class Built:
    fills: list[Fill]
    position: Position
    tp: dict[str, str] | None  # the tp_order hash


def build(n_fills: int, pairs: int, per_order: int) -> Iterator[Built]:
    """Positions of `per_order` buy fills and one TP fill each, until N fills; ids in time order."""
    made = 0
    k = 0
    while made < n_fills:
        symbol, base, tick, qty = SYMBOLS[k % pairs]
        tick_d = Decimal(tick)
        price = (Decimal(base) * (1 + Decimal(k % 50) / 10_000) / tick_d).to_integral_value(
            ROUND_DOWN
        ) * tick_d
        quantity = Decimal(qty)
        oid = f"o-{k:07d}"
        buys_n = min(per_order, n_fills - made)
        fills: list[Fill] = []
        buys: list[Buy] = []
        for _ in range(buys_n):
            ts = T0 + made * 10
            fee = (price * quantity * TAKER).quantize(Decimal("1e-8"), ROUND_UP)
            fills.append(
                Fill(
                    session_id=SID,
                    fill_id=f"f-{made:08d}",
                    order_id=oid,
                    symbol=symbol,
                    side="buy",
                    price=price,
                    quantity=quantity,
                    fee=fee,
                    ts=ts,
                )
            )
            buys.append(Buy(f"f-{made:08d}", price, quantity, fee, ts))
            made += 1
        position = Position(
            v=len(buys) + 2,
            id=oid,
            session_id=SID,
            symbol=symbol,
            opened_at=buys[0].ts,
            buys=tuple(buys),
        )
        tp: dict[str, str] | None = None
        if made < n_fills:  # a TP covering the position, filled by one sell
            total = quantity * len(buys)
            tp_price = (position.unit_cost * (1 + TARGET) / (1 - MAKER) / tick_d).to_integral_value(
                ROUND_UP
            ) * tick_d
            tp_id = f"T{k:07d}-BENCH"
            ts = T0 + made * 10
            fee = (tp_price * total * MAKER).quantize(Decimal("1e-8"), ROUND_UP)
            fills.append(
                Fill(
                    session_id=SID,
                    fill_id=f"f-{made:08d}",
                    order_id=tp_id,
                    symbol=symbol,
                    side="sell",
                    price=tp_price,
                    quantity=total,
                    fee=fee,
                    ts=ts,
                )
            )
            cid = client_id(SID, oid, 1)
            step = Step(
                n=1,
                client_id=cid,
                qty=total,
                price=tp_price,
                tier=1,
                status=StepStatus.FILLED,
                claimed_at=buys[-1].ts + 5,
                order_id=tp_id,
                acked_at=buys[-1].ts + 40,
                fills=(Close(f"f-{made:08d}", total, tp_price, fee, ts),),
            )
            position = position.with_step(step)
            tp = {
                "session_id": SID,
                "position": oid,
                "symbol": symbol,
                "price": str(tp_price),
                "quantity": str(total),
                "tier": "1",
                "client_id": cid,
                "created_at": iso(buys[-1].ts + 40),
                "status": "filled",
                "step": "1",
                "replaces": "",
                "filled": str(total),
            }
            made += 1
        k += 1
        yield Built(fills, position, tp)


async def populate(
    redis: aioredis.Redis, keys: Keys, n_fills: int, pairs: int, per_order: int
) -> tuple[int, int]:
    """Write the session to Redis (pipelined); returns (positions, tp orders)."""
    fills: dict[str, bytes] = {}
    positions: dict[str, bytes] = {}
    tps: dict[str, dict[str, str]] = {}
    n_positions = n_tps = 0
    last_ts = T0

    async def flush() -> None:
        async with redis.pipeline(transaction=False) as pipe:
            if fills:
                pipe.hset(keys.fills(SID), mapping=fills)  # type: ignore[arg-type]
            if positions:
                pipe.hset(keys.positions(SID), mapping=positions)  # type: ignore[arg-type]
            for oid, record in tps.items():
                pipe.hset(keys.tp_order(SID, oid), mapping=record)  # type: ignore[arg-type]
            if tps:
                pipe.sadd(keys.tp_orders(SID), *tps)
            await pipe.execute()
        fills.clear()
        positions.clear()
        tps.clear()

    for built in build(n_fills, pairs, per_order):
        for fill in built.fills:
            fills[fill.fill_id] = encode_fill(fill)
            last_ts = fill.ts
        positions[built.position.id] = encode_position(built.position)
        n_positions += 1
        if built.tp is not None:
            step = built.position.steps[0]
            tps[step.order_id] = built.tp
            n_tps += 1
        if len(fills) >= 20_000:
            await flush()
    await flush()
    symbols = [s for s, *_ in SYMBOLS[:pairs]]
    end = last_ts + 1000
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            keys.session(SID),
            mapping={
                "started_at": T0,
                "pairs": ",".join(symbols),
                "ended_at": end,
                "end_id": f"{end}-0",
                "fills_expected": n_fills,
            },
        )
        pipe.sadd(keys.pairs(SID), *symbols)
        pipe.zadd(keys.sessions, {SID: end})
        pipe.zadd(keys.sessions_ended, {SID: end})
        await pipe.execute()
    return n_positions, n_tps


def all_fills(n: int, pairs: int, per_order: int) -> Iterator[Fill]:
    for built in build(n, pairs, per_order):
        yield from built.fills
