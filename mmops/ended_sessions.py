"""Sessions that have ended but are still open, for `mmops status`.

A session stays open after its end while a position is open, a TP is live, or a change of
it is not yet in PostgreSQL (docs/contract.md §3). Sources:

- PostgreSQL: migrated sessions with no `closed_at` — open positions and live TPs as of
  their last sync, P&L so far;
- Redis: sessions ended and not migrated yet (`mm:sessions:ended`, with the migrator's
  reason when it waits for fills: `mm:migration:waiting`) — open positions and live TPs
  from their positions; and every listed session's changes not yet applied
  (`changes:{sid}`: the migrator trims what it applied).

A change older than STALE_FACTOR x MIGRATION_SYNC_SECONDS still not in PostgreSQL makes
the status unhealthy: the migrator is not keeping up (or not running).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

import asyncpg
import orjson

from base.logs import one_line
from base.settings import Settings
from mmops.reporting import fmt_ms, render_table
from storage import postgres
from storage.keys import Keys
from storage.redis import AnyRedis, as_text, entries_of, stream_id
from trading.positions import decode_position

MONEY = Decimal("0.0001")
EXACT = Context(prec=50)
STALE_FACTOR = 3
LIMIT = 50  # sessions listed; the count says how many more


async def collect(redis: AnyRedis, keys: Keys, settings: Settings, now: int) -> dict[str, Any]:
    """{"sessions": [...], "more": n, "problems": [...], "warnings": [...]}."""
    rows: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    try:
        for row in await _from_postgres(settings.database_url):
            rows[row["session_id"]] = row
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        warnings.append(f"sessions after their end: PostgreSQL not read ({one_line(exc, 120)})")
    for row in await _not_migrated(redis, keys):
        rows.setdefault(row["session_id"], row)
    ordered = sorted(rows.values(), key=lambda r: (r["ended_at"] or 0, r["session_id"]))
    await _changes(redis, keys, ordered, now)
    stale_ms = int(STALE_FACTOR * settings.migration_sync_seconds * 1000)
    problems = [
        f"session {r['session_id']}: a change {fmt_ms(r['oldest_change_age_ms'])} old is not in "
        f"PostgreSQL (more than {STALE_FACTOR} x MIGRATION_SYNC_SECONDS): is the migrator running?"
        for r in ordered
        if r["state"] != "not migrated"
        and r["oldest_change_age_ms"] is not None
        and r["oldest_change_age_ms"] > stale_ms
    ]
    return {
        "sessions": ordered[:LIMIT],
        "more": max(0, len(ordered) - LIMIT),
        "problems": problems,
        "warnings": warnings,
    }


async def _from_postgres(url: str) -> list[dict[str, Any]]:
    conn = await postgres.connect(url)
    try:
        records = await conn.fetch(
            """SELECT s.id, s.ended_at, s.synced_at, s.open_positions, s.total_pnl, s.total_fills,
                      (SELECT count(*) FROM orders o WHERE o.session_id = s.id AND o.is_take_profit
                          AND o.status IN ('live', 'pending', 'partially_filled'))::int AS live_tps
               FROM sessions s
               WHERE s.ended_at IS NOT NULL AND s.migrated_at IS NOT NULL AND s.closed_at IS NULL
               ORDER BY s.ended_at, s.id""",
            timeout=5,
        )
    except asyncpg.UndefinedColumnError:  # a schema before migration 0003: nothing is tracked
        return []
    finally:
        await conn.close()
    return [
        {
            "session_id": r["id"],
            "ended_at": int(r["ended_at"].timestamp() * 1000),
            "state": "migrated",
            "reason": "",
            "synced_at": None if r["synced_at"] is None else int(r["synced_at"].timestamp() * 1000),
            "open_positions": r["open_positions"],
            "live_tps": r["live_tps"],
            "fills": r["total_fills"],
            "pnl": str(r["total_pnl"]),
        }
        for r in records
    ]


async def _not_migrated(redis: AnyRedis, keys: Keys) -> list[dict[str, Any]]:
    """Ended, not in PostgreSQL yet: figures from their Redis positions."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrange(keys.sessions_ended, 0, LIMIT - 1, withscores=True)
        pipe.hgetall(keys.migration_waiting)
        ended, waiting = await pipe.execute()
    reasons = {as_text(k): orjson.loads(v) for k, v in waiting.items()}
    out = []
    for member, score in ended:
        sid = as_text(member)
        if await redis.exists(keys.migration_completed(sid)):
            continue
        open_positions = live = 0
        for raw in (await redis.hgetall(keys.positions(sid))).values():
            position = decode_position(raw)
            open_positions += position.is_open
            live += len(position.live)
        wait = reasons.get(sid)
        expected = wait.get("expected") if wait else None
        out.append(
            {
                "session_id": sid,
                "ended_at": int(score),
                "state": "waiting for fills" if wait else "not migrated",
                "reason": f"the end counted {expected} fills" if expected is not None else "",
                "synced_at": None,
                "open_positions": open_positions,
                "live_tps": live,
                "fills": int(await redis.hlen(keys.fills(sid))),
                "pnl": None,
            }
        )
    return out


async def _changes(redis: AnyRedis, keys: Keys, rows: list[dict[str, Any]], now: int) -> None:
    """Each row's changes not yet applied: how many, and the age of the oldest."""
    if not rows:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.xlen(keys.changes(row["session_id"]))
            pipe.xrange(keys.changes(row["session_id"]), count=1)
        replies = await pipe.execute()
    for n, row in enumerate(rows):
        count, first = int(replies[2 * n]), entries_of(replies[2 * n + 1])
        row["changes"] = count
        row["oldest_change_age_ms"] = (
            max(0, now - stream_id(first[0][0])[0])
            if first and row["state"] == "migrated"
            else None
        )


def render(found: dict[str, Any], now: int) -> list[str]:
    sessions = found["sessions"]
    if not sessions:
        return ["sessions ended and still open: none"]
    rows = [
        [
            s["session_id"],
            fmt_ms(now - s["ended_at"]) + " ago" if s["ended_at"] else "-",
            _state(s, now),
            s["open_positions"],
            s["live_tps"],
            s["changes"] if s["state"] == "migrated" else "-",
            s["fills"],
            "-" if s["pnl"] is None else _money(Decimal(s["pnl"])),
        ]
        for s in sessions
    ]
    more = f" (and {found['more']} more)" if found["more"] else ""
    table = render_table(
        [
            "SESSION",
            "ENDED",
            "POSTGRESQL",
            "OPEN POSITIONS",
            "LIVE TPS",
            "CHANGES NOT IN PG",
            "FILLS",
            "P&L SO FAR",
        ],
        rows,
    )
    return [f"sessions ended and still open: {len(sessions) + found['more']}{more}"] + [
        "  " + line for line in table.splitlines()
    ]


def _money(value: Decimal) -> str:
    return f"{value.quantize(MONEY, rounding=ROUND_HALF_EVEN, context=EXACT):,}"


def _state(s: dict[str, Any], now: int) -> str:
    if s["state"] != "migrated":
        return str(s["state"]) + (f" ({s['reason']})" if s["reason"] else "")
    synced = s["synced_at"]
    return "migrated" + ("" if synced is None else f", synced {fmt_ms(now - synced)} ago")
