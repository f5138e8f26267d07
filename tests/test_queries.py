"""docs/queries.sql and `mmops report` against sessions built by the real coverage worker and
migrator."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from base.clock import ManualClock
from mmops.app import App
from mmops.commands import report
from tests.conftest import MakeApp
from workers.coverage import CoverageHandler
from workers.migrator import MigratorHandler
from workers.runtime import Runtime

D = Decimal
DAY1 = 1_763_632_800_000  # 2025-11-20 10:00 UTC
DAY2 = 1_763_719_200_000  # 2025-11-21 10:00 UTC
QUERIES = Path(__file__).resolve().parent.parent / "docs" / "queries.sql"


def named_queries() -> dict[str, str]:
    """name -> SQL (comment lines dropped) of every `-- name:` block in docs/queries.sql."""
    out: dict[str, str] = {}
    name = None
    for line in QUERIES.read_text().splitlines():
        found = re.match(r"--\s*name:\s*(\S+)", line)
        if found:
            name = found.group(1)
            out[name] = ""
        elif name and not line.lstrip().startswith("--"):
            out[name] += line + "\n"
    return {k: v.strip().rstrip(";") for k, v in out.items()}


@pytest.fixture
async def migrated(make_app: MakeApp, pg: asyncpg.Pool) -> AsyncIterator[dict[str, Any]]:
    """Session A on day 1 (a BTC TP round trip won, an ETH FIFO round trip lost) and session B
    on day 2 (coverage in DRY_RUN: its BTC buy stays uncovered; an ETH round trip won)."""
    clock = ManualClock(DAY1 + 60_000)
    app = await make_app(clock=clock)
    dry = await make_app(clock=clock, dry_run=True)
    migrator = await MigratorHandler.create(app)
    try:

        async def send(kind: str, **fields: object) -> None:
            await app.redis.xadd(
                app.keys.stream, {"type": kind, **{k: str(v) for k, v in fields.items()}}
            )

        async def fill(
            sid: str,
            fid: str,
            oid: str,
            symbol: str,
            side: str,
            price: str,
            qty: str,
            fee: str,
            ts: int,
        ) -> None:
            await send(
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

        async def drain(of: App) -> None:
            handler = CoverageHandler(of)
            await Runtime(of.redis, of.keys, of.settings, handler, "cov").run(until_drained=True)
            await Runtime(app.redis, app.keys, app.settings, migrator, "mig").run(
                until_drained=True
            )

        await send("session_started", session_id="A", pairs="BTC/USD,ETH/USD", ts=DAY1)
        await fill("A", "a1", "a-o1", "BTC/USD", "buy", "60000", "0.01", "0.6", DAY1 + 1000)
        await fill("A", "a2", "a-o2", "ETH/USD", "buy", "3000", "0.5", "0.375", DAY1 + 2000)
        await drain(app)
        [tp] = await app.redis.smembers(app.keys.tp_orders("A")) & {
            oid
            for oid in await app.redis.smembers(app.keys.tp_orders("A"))
            if (await app.redis.hget(app.keys.tp_order("A", oid.decode()), "position")) == b"a-o1"
        }
        tp_price = D((await app.redis.hget(app.keys.tp_order("A", tp.decode()), "price")).decode())
        await fill(
            "A", "a3", tp.decode(), "BTC/USD", "sell", str(tp_price), "0.01", "0.15", DAY1 + 3000
        )
        await fill(
            "A", "a4", "a-o9", "ETH/USD", "sell", "2990", "0.5", "0.3", DAY1 + 4000
        )  # FIFO, a loss
        await send("session_ended", session_id="A", ts=DAY1 + 5000, fills=4)
        await drain(app)

        clock.ms = DAY2 + 60_000
        await send("session_started", session_id="B", pairs="BTC/USD,ETH/USD", ts=DAY2)
        await fill("B", "b1", "b-o1", "BTC/USD", "buy", "61000", "0.01", "0.61", DAY2 + 1000)
        await fill("B", "b2", "b-o2", "ETH/USD", "buy", "3100", "1", "0.5", DAY2 + 2000)
        await fill(
            "B", "b3", "b-o9", "ETH/USD", "sell", "3120", "1", "0.5", DAY2 + 3000
        )  # FIFO, a win
        await send("session_ended", session_id="B", ts=DAY2 + 5000, fills=3)
        await drain(dry)  # DRY_RUN coverage: no TP placed, the BTC buy stays uncovered

        btc_unit = (D("60000") * D("0.01") + D("0.6")) / D("0.01")  # 60060
        yield {
            "tp_price": tp_price,
            "btc_pnl": tp_price * D("0.01") - D("0.15") - D("0.01") * btc_unit,
            "btc_spread": ((tp_price - btc_unit) / btc_unit).quantize(D("1e-10")),
            "eth_a": D("2990") * D("0.5") - D("0.3") - D("0.5") * D("3000.75"),  # -5.675
            "eth_b": D("3120") - D("0.5") - D("3100.5"),  # 19.0
            "eth_spreads": [
                (D("2990") - D("3000.75")) / D("3000.75"),
                (D("3120") - D("3100.5")) / D("3100.5"),
            ],
        }
    finally:
        await migrator.close()


def test_every_query_has_a_header_and_sql() -> None:
    queries = named_queries()
    assert set(queries) == {
        "pair_profitability",
        "fills_per_pair_per_day",
        "fee_share_of_pnl",
        "sessions_with_uncovered_positions",
        "daily_pnl",
        "sessions_still_open",
    }
    text = QUERIES.read_text()
    for name, sql in queries.items():
        assert sql.upper().startswith("SELECT"), name
        header = text.split(f"-- name: {name}\n", 1)[1].splitlines()[0]
        assert header.startswith("-- ") and len(header) > 20, name


async def test_queries_known_answers(migrated: dict[str, Any], pg: asyncpg.Pool) -> None:
    q = named_queries()
    x = migrated
    eth_pnl = x["eth_a"] + x["eth_b"]  # 13.325

    rows = [dict(r) for r in await pg.fetch(q["pair_profitability"])]
    assert [r["symbol"] for r in rows] == ["ETH/USD", "BTC/USD"]  # by realized P&L
    eth, btc = rows
    assert (eth["round_trips"], eth["wins"], eth["win_rate"]) == (2, 1, D("0.5"))
    assert eth["realized_pnl"] == eth_pnl and eth["fees"] == D("1.675")
    half_up = (sum(s.quantize(D("1e-10")) for s in x["eth_spreads"]) / 2).quantize(
        D("1e-10"), ROUND_HALF_UP
    )
    assert eth["avg_spread"] == half_up  # SQL round(): half away from zero
    assert (btc["round_trips"], btc["wins"], btc["win_rate"]) == (1, 1, D("1"))
    assert btc["realized_pnl"] == x["btc_pnl"].quantize(D("1e-10"))
    assert btc["fees"] == D("0.6") + D("0.15") + D("0.61")
    assert btc["avg_spread"] == x["btc_spread"]

    rows = [dict(r) for r in await pg.fetch(q["fills_per_pair_per_day"])]
    assert [(str(r["day"]), r["symbol"], r["fills"], r["buys"], r["sells"]) for r in rows] == [
        ("2025-11-20", "BTC/USD", 2, 1, 1),
        ("2025-11-20", "ETH/USD", 2, 1, 1),
        ("2025-11-21", "BTC/USD", 1, 1, 0),
        ("2025-11-21", "ETH/USD", 2, 1, 1),
    ]
    assert rows[0]["volume"] == D("600") + x["tp_price"] * D("0.01")
    assert rows[1]["realized_pnl"] == x["eth_a"] and rows[3]["realized_pnl"] == x["eth_b"]
    assert rows[2]["realized_pnl"] == 0

    rows = {r["symbol"]: dict(r) for r in await pg.fetch(q["fee_share_of_pnl"])}
    assert rows["ETH/USD"]["trade_fees"] == D("0.3") + D("0.375") + D("0.5") + D("0.5")
    assert rows["ETH/USD"]["fee_share"] == (D("1.675") / (eth_pnl + D("1.675"))).quantize(
        D("1e-6")
    )  # 0.111667
    assert rows["BTC/USD"]["trade_fees"] == D("0.75")  # the sale's fee and all of the buy's
    btc_before = x["btc_pnl"].quantize(D("1e-10")) + D("0.75")
    assert rows["BTC/USD"]["fee_share"] == (D("0.75") / btc_before).quantize(D("1e-6"))

    rows = [dict(r) for r in await pg.fetch(q["sessions_with_uncovered_positions"])]
    assert [(r["session_id"], r["uncovered_positions"], r["open_positions"]) for r in rows] == [
        ("B", 1, 1)
    ]
    assert rows[0]["total_pnl"] == x["eth_b"]

    rows = [dict(r) for r in await pg.fetch(q["sessions_still_open"])]  # A closed at its end
    assert [
        (r["session_id"], r["open_positions"], r["live_tps"], r["fills_after_end"]) for r in rows
    ] == [("B", 1, 0, 0)]
    assert rows[0]["total_pnl"] == x["eth_b"]

    rows = [dict(r) for r in await pg.fetch(q["daily_pnl"])]
    day1 = x["btc_pnl"].quantize(D("1e-10")) + x["eth_a"]
    assert [(str(r["day"]), r["pnl"], r["cumulative"]) for r in rows] == [
        ("2025-11-20", day1, day1),
        ("2025-11-21", x["eth_b"], day1 + x["eth_b"]),
    ]


async def test_report_tables(migrated: dict[str, Any], pg: asyncpg.Pool) -> None:
    x = migrated
    async with pg.acquire() as conn:
        everything = await report.build(conn)
        only_b = await report.build(conn, session="B")
        since = await report.build(conn, since=dt.date(2025, 11, 21))
    assert everything.sessions == 2 and only_b.sessions == 1 and since.sessions == 1
    day1 = x["btc_pnl"].quantize(D("1e-10")) + x["eth_a"]
    assert everything.days == [(dt.date(2025, 11, 20), day1), (dt.date(2025, 11, 21), x["eth_b"])]
    assert day1 < 0 and everything.max_drawdown == (
        -day1,
        dt.date(2025, 11, 20),
    )  # from 0 down to day 1
    mean = (day1 + x["eth_b"]) / 2
    stdev = (((day1 - mean) ** 2 + (x["eth_b"] - mean) ** 2) / 1).sqrt()
    assert everything.sharpe == (mean / stdev * D(365).sqrt()).quantize(D("0.01"))
    assert only_b.sharpe is None  # one day: n/a
    [eth_b] = [p for p in only_b.pairs if p.symbol == "ETH/USD"]
    assert (eth_b.round_trips, eth_b.wins, eth_b.pnl, eth_b.win_rate) == (1, 1, x["eth_b"], D(1))

    text = report.render(everything)
    lines = text.splitlines()
    assert "Per pair" in lines and "Portfolio: daily P&L (UTC)" in lines
    header = lines[lines.index("Per pair") + 1]
    assert header.split("  ")[0] == "PAIR" and "WIN RATE" in header and "AVG SPREAD" in header
    eth_line = next(line for line in lines if line.startswith("ETH/USD"))
    assert "50.0%" in eth_line and f"{eth_b.pnl + x['eth_a']:,.4f}" in eth_line
    assert len(lines[lines.index("Per pair") + 1]) == len(
        lines[lines.index("Per pair") + 2]
    )  # aligned
    assert "Sharpe (daily P&L, mean / stdev x sqrt(365)): " + str(everything.sharpe) in text
    assert "n/a" in report.render(only_b)


def test_drawdown_and_sharpe() -> None:
    days = [
        (dt.date(2025, 1, d), D(v))
        for d, v in ((1, "10"), (2, "-4"), (3, "-8"), (4, "5"), (5, "20"))
    ]
    assert report.max_drawdown(days) == (D("12"), dt.date(2025, 1, 3))  # peak 10, trough -2
    assert report.max_drawdown([(dt.date(2025, 1, 1), D("-3"))]) == (D("3"), dt.date(2025, 1, 1))
    assert report.sharpe([D("1")]) is None and report.sharpe([D("2"), D("2")]) is None
    assert report.sharpe([D("1"), D("3")]) == D(
        "27.02"
    )  # mean 2, stdev sqrt(2): 2/1.41421 x 19.10497
