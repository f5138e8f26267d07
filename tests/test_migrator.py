"""The migrator against real Redis and PostgreSQL; sessions built by the real coverage worker."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from base.clock import ManualClock
from base.settings import Settings
from mmops.app import App
from storage import schema
from storage.ledger import decode_fill
from storage.postgres import create_pool
from storage.session_reader import FillRow, decode_fill_row, decode_position_row, ms_to_datetime
from tests.cluster import ON_BOTH
from tests.conftest import MakeApp, with_search_path
from trading.positions import decode_position
from workers.coverage import CoverageHandler
from workers.migration import MigrationStatus, migrate_session
from workers.migrator import MigratorHandler
from workers.runtime import RunStats, Runtime

pytestmark = ON_BOTH  # single Redis and the local Redis Cluster (tests/cluster.py)

D = Decimal
T0 = 1_763_700_000_000  # 2025-11-21 04:40:00 UTC
MONEY = D("1e-10")


@pytest.fixture
async def app(make_app: MakeApp) -> App:
    return await make_app(clock=ManualClock(T0 + 60_000))


# --- builders -------------------------------------------------------------------------


async def send(app: App, kind: str, **fields: object) -> str:
    entry = await app.redis.xadd(
        app.keys.stream, {"type": kind, **{k: str(v) for k, v in fields.items()}}
    )
    return entry.decode()


async def fill(
    app: App,
    sid: str,
    fid: str,
    oid: str,
    symbol: str,
    side: str,
    price: str,
    qty: str,
    fee: str,
    ts: int,
) -> str:
    return await send(
        app,
        "fill",
        session_id=sid,
        fill_id=fid,
        order_id=oid,
        symbol=symbol,
        side=side,
        price=price,
        quantity=qty,
        fee=fee,
        ts=ts,
    )


def coverage_runtime(app: App, stop: asyncio.Event | None = None) -> Runtime:
    handler = CoverageHandler(app)
    return Runtime(app.redis, app.keys, app.settings, handler, "cov", stop=stop or asyncio.Event())


async def drain_coverage(app: App) -> RunStats:
    return await coverage_runtime(app).run(until_drained=True)


async def drain_migrator(app: App, handler: MigratorHandler) -> RunStats:
    return await Runtime(app.redis, app.keys, app.settings, handler, "mig").run(until_drained=True)


class Background:
    """A runtime running as a task until stopped."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.task = asyncio.ensure_future(runtime.run())

    async def stop(self) -> RunStats:
        self.runtime.stop.set()
        return await asyncio.wait_for(self.task, 10)


async def tp_of(app: App, sid: str, position: str) -> list[dict[str, str]]:
    """The TP records of a position, oldest step first."""
    out = []
    for oid in await app.redis.smembers(app.keys.tp_orders(sid)):
        record = {
            k.decode(): v.decode()
            for k, v in (await app.redis.hgetall(app.keys.tp_order(sid, oid.decode()))).items()
        }
        if record["position"] == position:
            out.append({**record, "order_id": oid.decode()})
    return sorted(out, key=lambda r: int(r["step"]))


async def alerts(app: App, kind: str) -> list[dict[str, str]]:
    rows = await app.redis.xrange(app.keys.alerts)
    out = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]
    return [a for a in out if a["kind"] == kind]


async def table(
    pg: asyncpg.Pool | asyncpg.Connection, sql: str, *args: object
) -> list[dict[str, Any]]:
    return [dict(r) for r in await pg.fetch(sql, *args)]


async def snapshot(
    pg: asyncpg.Pool | asyncpg.Connection, sid: str
) -> dict[str, list[dict[str, Any]]]:
    """Every row of the session, migrated_at left out (a re-run keeps the first one anyway)."""
    return {
        "sessions": await table(pg, "SELECT * FROM sessions WHERE id = $1", sid),
        "orders": await table(pg, "SELECT * FROM orders WHERE session_id = $1 ORDER BY id", sid),
        "fills": await table(pg, "SELECT * FROM fills WHERE session_id = $1 ORDER BY id", sid),
        "pairs": await table(
            pg, "SELECT * FROM session_pairs WHERE session_id = $1 ORDER BY symbol", sid
        ),
    }


def q(value: Decimal) -> Decimal:
    return value.quantize(MONEY)


async def full_session(app: App, sid: str = "s-1") -> dict[str, Any]:
    """Buys (one order filled twice), a TP fill, a FIFO sell, a fill sent twice with a new id.

    Returns the numbers the migration must produce, worked out by hand.
    """
    await send(app, "session_started", session_id=sid, pairs="BTC/USD,ETH/USD", ts=T0)
    await send(
        app,
        "order",
        session_id=sid,
        order_id="o-1",
        symbol="BTC/USD",
        side="buy",
        order_type="limit",
        price="60010",
        quantity="0.020",
        status="filled",
        ts=T0 + 500,
    )
    await fill(app, sid, "f-1", "o-1", "BTC/USD", "buy", "60000", "0.010", "0.60", T0 + 1000)
    await fill(app, sid, "f-2", "o-1", "BTC/USD", "buy", "60010", "0.010", "0.60", T0 + 2000)
    await fill(app, sid, "f-3", "o-2", "ETH/USD", "buy", "3000", "0.5", "0.375", T0 + 3000)
    await fill(app, sid, "f-4", "o-3", "ETH/USD", "buy", "3010", "0.5", "0.37625", T0 + 4000)
    await fill(
        app, sid, "f-4b", "o-3", "ETH/USD", "buy", "3010", "0.5", "0.37625", T0 + 4000
    )  # sent twice
    await drain_coverage(app)
    tps = await tp_of(app, sid, "o-1")  # one per buy fill: the second one topped the first up
    for i, tp in enumerate(tps):  # each TP filled in full
        await fill(
            app,
            sid,
            f"t-{i + 1}",
            tp["order_id"],
            "BTC/USD",
            "sell",
            tp["price"],
            tp["quantity"],
            "0.25",
            T0 + 10_000 + i,
        )
    await fill(
        app, sid, "s-9", "o-9", "ETH/USD", "sell", "3050", "0.5", "0.38125", T0 + 20_000
    )  # FIFO: o-2
    await send(app, "session_ended", session_id=sid, ts=T0 + 30_000, fills=6 + len(tps))
    await drain_coverage(app)
    btc_unit = (D("60000") * D("0.010") + D("60010") * D("0.010") + D("1.20")) / D("0.020")  # 60065
    tp_pnl = [
        D(tp["price"]) * D(tp["quantity"]) - D("0.25") - D(tp["quantity"]) * btc_unit for tp in tps
    ]
    eth_unit = (D("3000") * D("0.5") + D("0.375")) / D("0.5")  # 3000.75
    eth_pnl = D("3050") * D("0.5") - D("0.38125") - D("0.5") * eth_unit  # 24.24375
    spreads = [(D(tp["price"]) - btc_unit) / btc_unit for tp in tps]
    return {
        "tps_o1": tps,
        "tp_pnl": tp_pnl,
        "btc_pnl": sum(tp_pnl),
        "eth_pnl": eth_pnl,
        "btc_volume": sum(D(tp["price"]) * D(tp["quantity"]) for tp in tps),
        "btc_spread": sum(spreads) / len(spreads),
        "eth_spread": (D("3050") - eth_unit) / eth_unit,
        "tps": {
            "o-1": len(tps),
            "o-2": len(await tp_of(app, sid, "o-2")),
            "o-3": len(await tp_of(app, sid, "o-3")),
        },
    }


# --- tests ----------------------------------------------------------------------------


async def test_session_started_makes_a_live_session_row(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool
) -> None:
    await send(app, "session_started", session_id="s-live", pairs="BTC/USD,ETH/USD,SOL/USD", ts=T0)
    await send(
        app,
        "fill",
        session_id="s-live",
        fill_id="f-1",
        order_id="o-1",
        symbol="BTC/USD",
        side="buy",
        price="60000",
        quantity="0.01",
        fee="0.6",
        ts=T0 + 1,
    )
    await drain_migrator(app, migrator)
    [row] = await table(pg, "SELECT * FROM sessions WHERE id = 's-live'")
    assert row["pairs"] == ["BTC/USD", "ETH/USD", "SOL/USD"] and row["pair_count"] == 3
    assert row["started_at"] == ms_to_datetime(T0)
    assert row["ended_at"] is None and row["migrated_at"] is None
    assert await pg.fetchval("SELECT count(*) FROM fills") == 0


async def test_full_session_rows_and_totals_exactly(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool
) -> None:
    x = await full_session(app)
    assert x["tps"] == {"o-1": 2, "o-2": 1, "o-3": 2}  # a TP per buy fill, the dup's included
    stats = await drain_migrator(app, migrator)
    assert stats.failed == 0

    [s] = await table(pg, "SELECT * FROM sessions WHERE id = 's-1'")
    assert s["pairs"] == ["BTC/USD", "ETH/USD"] and s["pair_count"] == 2
    assert s["total_fills"] == 7 and s["duplicate_fills"] == 1  # f-4b stored once (as f-4)
    assert s["total_orders"] == 9  # 5 TPs + o-1 (event), o-2, o-3 (fills), o-9 (a sell)
    assert s["total_pnl"] == q(x["btc_pnl"]) + q(x["eth_pnl"])
    assert s["total_fees"] == D("1.7") + D("1.1325")
    assert s["total_volume"] == D("600") + D("600.1") + x["btc_volume"] + D("1500") + D("1505") + D(
        "1525"
    )
    assert (s["uncovered_positions"], s["open_positions"]) == (
        0,
        1,
    )  # o-3 still held, under its TPs
    assert s["started_at"] == ms_to_datetime(T0) and s["ended_at"] == ms_to_datetime(T0 + 30_000)
    assert s["migrated_at"] == ms_to_datetime(T0 + 60_000)

    pairs = {
        r["symbol"]: r
        for r in await table(pg, "SELECT * FROM session_pairs WHERE session_id = 's-1'")
    }
    btc, eth = pairs["BTC/USD"], pairs["ETH/USD"]
    assert (btc["total_orders"], btc["total_fills"], btc["round_trips"], btc["wins"]) == (
        3,
        4,
        2,
        2,
    )
    assert (eth["total_orders"], eth["total_fills"], eth["round_trips"], eth["wins"]) == (
        6,
        3,
        1,
        1,
    )
    assert btc["total_pnl"] == q(x["btc_pnl"]) and eth["total_pnl"] == D("24.24375")
    assert btc["total_fees"] == D("1.7") and eth["total_fees"] == D("1.1325")
    assert btc["avg_spread"] == q(x["btc_spread"]) and eth["avg_spread"] == q(x["eth_spread"])

    fills = {r["id"]: r for r in await table(pg, "SELECT * FROM fills WHERE session_id = 's-1'")}
    assert set(fills) == {"f-1", "f-2", "f-3", "f-4", "t-1", "t-2", "s-9"}
    assert [fills["t-1"]["realized_pnl"], fills["t-2"]["realized_pnl"]] == [
        q(p) for p in x["tp_pnl"]
    ]
    assert fills["s-9"]["realized_pnl"] == D("24.24375")
    assert fills["f-1"]["realized_pnl"] is None
    f2 = fills["f-2"]
    assert (f2["order_id"], f2["symbol"], f2["side"], f2["quantity"], f2["price"], f2["fee"]) == (
        "o-1",
        "BTC/USD",
        "buy",
        D("0.010"),
        D("60010"),
        D("0.60"),
    )
    assert f2["timestamp"] == ms_to_datetime(T0 + 2000)

    orders = {r["id"]: r for r in await table(pg, "SELECT * FROM orders WHERE session_id = 's-1'")}
    o1, o2, o3, o9 = orders["o-1"], orders["o-2"], orders["o-3"], orders["o-9"]
    assert (
        o1["type"],
        o1["quantity"],
        o1["price"],
        o1["status"],
        o1["filled_quantity"],
        o1["pair_index"],
    ) == ("limit", D("0.020"), D("60010"), "filled", D("0.020"), 0)  # from its order event
    assert (o2["side"], o2["quantity"], o2["price"], o2["type"], o2["pair_index"]) == (
        "buy",
        D("0.5"),
        D("3000"),
        "unknown",
        1,
    )
    assert (o3["quantity"], o3["price"]) == (D("0.5"), D("3010"))  # the duplicate is not counted
    assert (o9["side"], o9["quantity"], o9["price"]) == ("sell", D("0.5"), D("3050"))
    for record in x["tps_o1"]:
        tp = orders[record["order_id"]]
        assert (
            tp["is_take_profit"]
            and tp["position_id"] == "o-1"
            and tp["client_order_id"] == record["client_id"]
        )
        assert (
            tp["side"],
            tp["type"],
            tp["price"],
            tp["quantity"],
            tp["status"],
            tp["filled_quantity"],
        ) == ("sell", "limit", D(record["price"]), D("0.010"), "filled", D("0.010"))
        assert tp["tier"] == int(record["tier"]) and tp["pair_index"] == 0
    assert sum(1 for o in orders.values() if o["is_take_profit"]) == 5
    # o-2 was closed by the FIFO sell s-9: its TP was cancelled (docs/contract.md §3 Closing)
    assert {o["status"] for o in orders.values() if o["position_id"] == "o-2"} == {"cancelled"}
    assert {o["status"] for o in orders.values() if o["position_id"] == "o-3"} == {"live"}

    assert await app.redis.get(app.keys.migration_completed("s-1")) == b"2025-11-21T04:41:00.000Z"
    metrics = await app.redis.hgetall(app.keys.metrics_migration("s-1"))
    assert (metrics[b"orders"], metrics[b"fills"]) == (b"9", b"7") and int(
        metrics[b"duration_ms"]
    ) >= 0
    assert await app.redis.zscore(app.keys.sessions_ended, "s-1") is None


async def test_row_decoders_read_what_the_models_read(app: App) -> None:
    """storage.session_reader's lean FillRow/PositionRow mirror Fill/Position: same values."""
    await full_session(app)
    for raw in (await app.redis.hgetall(app.keys.fills("s-1"))).values():
        fill, row = decode_fill(raw), decode_fill_row(raw)
        entry = await app.redis.xrange(app.keys.stream, row.entry, row.entry)
        assert entry[0][1][b"fill_id"].decode() == row.fill_id  # the stream id of its event
        for name in FillRow.__struct_fields__:
            if name == "entry":
                continue
            value = getattr(fill, name)
            assert (
                D(getattr(row, name)) if isinstance(value, Decimal) else getattr(row, name)
            ) == value
    positions = (await app.redis.hgetall(app.keys.positions("s-1"))).values()
    assert len(positions) == 3
    for raw in positions:
        pos, row = decode_position(raw), decode_position_row(raw)
        assert (row.id, row.symbol, D(row.dust), row.opened_at) == (
            pos.id,
            pos.symbol,
            pos.dust,
            pos.opened_at,
        )
        assert [(b.fill_id, D(b.price), D(b.qty), D(b.fee), b.ts) for b in row.buys] == [
            (b.fill_id, b.price, b.qty, b.fee, b.ts) for b in pos.buys
        ]
        closes = [(c.fill_id, c.qty, c.price, c.fee, c.ts) for c in pos.closes]
        assert [(c.fill_id, D(c.qty), D(c.price), D(c.fee), c.ts) for c in row.closes] == closes
        for srow, step in zip(row.steps, pos.steps, strict=True):
            assert (
                srow.order_id,
                srow.client_id,
                D(srow.qty),
                D(srow.price),
                srow.tier,
                srow.status,
            ) == (step.order_id, step.client_id, step.qty, step.price, step.tier, step.status)
            assert (D(srow.cancelled), srow.acked_at, srow.claimed_at) == (
                step.cancelled,
                step.acked_at,
                step.claimed_at,
            )
            assert [(c.fill_id, D(c.qty), D(c.price), D(c.fee)) for c in srow.fills] == [
                (c.fill_id, c.qty, c.price, c.fee) for c in step.fills
            ]


async def test_rerun_inserts_nothing_and_new_fills_add_only_themselves(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool, settings: Settings
) -> None:
    await full_session(app)
    await drain_migrator(app, migrator)
    before = await snapshot(pg, "s-1")

    again = await migrate_session(app, migrator.pool, "s-1")
    assert again.status is MigrationStatus.ALREADY
    forced = await migrate_session(app, migrator.pool, "s-1", force=True)  # the staging path
    assert forced.status is MigrationStatus.MIGRATED and not forced.fast
    assert (forced.new_fills, forced.new_orders) == (0, 0)
    assert await snapshot(pg, "s-1") == before

    # a fill after the end: a FIFO sell closing half of o-3 (whose unit cost counts the dup buy)
    await fill(app, "s-1", "s-10", "o-10", "ETH/USD", "sell", "3060", "0.25", "0.1", T0 + 40_000)
    await drain_coverage(app)
    later = await migrate_session(app, migrator.pool, "s-1", force=True)
    assert later.new_fills == 1
    after = await snapshot(pg, "s-1")
    # its order o-10; and o-3 held 0.75 under 1.0 of TPs: one 0.5 TP was cancelled and the
    # 0.25 left uncovered got a TP of its own (docs/contract.md §3 Closing)
    o3 = sorted((r["status"], r["quantity"]) for r in after["orders"] if r["position_id"] == "o-3")
    assert o3 == [("cancelled", D("0.5")), ("live", D("0.25")), ("live", D("0.5"))]
    assert "o-10" in {r["id"] for r in after["orders"]}
    assert len(after["fills"]) == 8 and after["sessions"][0]["total_fills"] == 8
    o3_unit = (D("3010") * D("0.5") * 2 + D("0.37625") * 2) / D("1.0")
    added = D("3060") * D("0.25") - D("0.1") - D("0.25") * o3_unit  # 12.211875
    eth = next(p for p in after["pairs"] if p["symbol"] == "ETH/USD")
    assert eth["total_pnl"] == D("24.24375") + added and eth["round_trips"] == 2
    assert after["sessions"][0]["total_pnl"] == before["sessions"][0]["total_pnl"] + added
    assert after["sessions"][0]["migrated_at"] == before["sessions"][0]["migrated_at"]

    # the staging path's figures are the fast path's: migrate the same state into a fresh schema
    fresh = f"t_{uuid.uuid4().hex[:10]}"
    pool = await create_pool(with_search_path(settings.database_url.split("?")[0], fresh))
    try:
        await pool.execute(f'CREATE SCHEMA "{fresh}"')
        async with pool.acquire() as conn:
            await schema.upgrade(conn)
        first = await migrate_session(app, pool, "s-1", force=True)
        assert first.fast and first.new_fills == 8
        assert await snapshot(pool, "s-1") == after
    finally:
        await pool.execute(f'DROP SCHEMA "{fresh}" CASCADE')
        await pool.close()
