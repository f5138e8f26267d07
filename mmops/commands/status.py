"""`mmops status [--json]`: consumer groups, pending work, lag, dead letters, lease, risk halt.

Exit status 1 when unhealthy, with the reasons:
- an entry pending (delivered, not acked) idle longer than STUCK_FACTOR x RECLAIM_IDLE_MS:
  nobody is reclaiming it;
- a group with work (lag or pending entries) and no live consumer (heartbeat within
  LIVE_AFTER_S);
- `risk:halt` is set;
- a dead letter newer than --dead-window minutes;
- a change of an ended session not in PostgreSQL after 3 x MIGRATION_SYNC_SECONDS.
A missing sweeper lease or an unknown lag is only a warning. The sessions that have ended
but are still open (open positions, live TPs, changes not yet in PostgreSQL) are listed
(mmops/ended_sessions.py).

With MM_STREAM_SHARDS > 1 every shard's stream is reported (and judged) on its own, after
a table of one row per shard: length, groups, pending entries, the largest lag.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from redis.exceptions import ResponseError

from base.settings import Settings
from mmops import ended_sessions, runner
from mmops.reporting import fmt_ms, render_table
from storage import redis as redis_store
from storage.keys import Keys
from storage.redis import AnyRedis, as_text, entries_of, stream_id
from trading.factory import make_rate_budget

STUCK_FACTOR = 3
LIVE_AFTER_S = 15.0
DEAD_SCAN = 1000  # newest dead letters counted per group


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser(
        "status",
        help="consumer groups, pending entries, lag, dead letters, sweeper lease, risk halt",
        description="Exit status 1 (with the reasons) when unhealthy: an entry pending longer than "
        f"{STUCK_FACTOR} x RECLAIM_IDLE_MS, a group with work and no live consumer, risk:halt set, "
        "or a dead letter newer than --dead-window.",
    )
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.add_argument(
        "--dead-window",
        type=float,
        default=60.0,
        metavar="MINUTES",
        help="dead letters newer than this make the status unhealthy (default 60)",
    )
    cmd.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    thresholds = Thresholds(dead_window_ms=int(args.dead_window * 60_000))

    async def main(settings: Settings) -> int:
        conn = await redis_store.connect(settings.redis_url, cluster=settings.redis_cluster)
        try:
            report = await collect(conn, Keys.of(settings), settings, thresholds)
        finally:
            await conn.aclose()
        if args.json:
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        else:
            print(render(report))
        return 0 if report["healthy"] else 1

    return runner.run(main)


@dataclass(frozen=True, slots=True)
class Thresholds:
    stuck_factor: int = STUCK_FACTOR
    live_after_ms: int = int(LIVE_AFTER_S * 1000)
    dead_window_ms: int = 3_600_000


# --- collecting ------------------------------------------------------------------------
async def collect(
    redis: AnyRedis, keys: Keys, settings: Settings, thresholds: Thresholds | None = None
) -> dict[str, Any]:
    """The whole status as a JSON-ready dict, with `healthy`, `problems` and `warnings`."""
    limits = thresholds or Thresholds()
    now = time.time_ns() // 1_000_000
    stuck_ms = limits.stuck_factor * settings.reclaim_idle_ms
    dead = await _dead_letters(redis, keys, now)
    streams = [
        await _stream(redis, keys, name, now, stuck_ms, limits, dead["by_group"])
        for name in (*keys.streams, keys.alerts)
    ]
    shards = [_shard_row(n, stream) for n, stream in enumerate(streams[: keys.shards])]
    lease = await _lease(redis, keys)
    budgets = await _rate_budgets(redis, keys, settings)
    halt_raw = await redis.get(keys.risk_halt)
    halt = _json_or_text(halt_raw) if halt_raw is not None else None
    ended = await ended_sessions.collect(redis, keys, settings, now)

    problems: list[str] = list(ended.pop("problems"))
    warnings: list[str] = list(ended.pop("warnings"))
    for stream in streams:
        for group in stream["groups"]:
            name = f"{stream['stream']}/{group['group']}"
            if group["stuck"]:
                problems.append(
                    f"{name}: {group['stuck']} pending entr{'y' if group['stuck'] == 1 else 'ies'} "
                    f"idle longer than {limits.stuck_factor} x RECLAIM_IDLE_MS "
                    f"({fmt_ms(stuck_ms)}): nobody reclaims them"
                )
            backlog = group["lag"] if group["lag"] is not None else (1 if group["behind"] else 0)
            if group["live"] == 0 and (backlog or group["pending"]):
                work = (
                    f"lag {group['lag'] if group['lag'] is not None else '?'}, "
                    f"{group['pending']} pending"
                )
                problems.append(f"{name}: no live consumer ({work})")
            if group["lag"] is None and group["behind"]:
                warnings.append(
                    f"{name}: lag unknown (entries were deleted or trimmed); the group is behind "
                    "the stream"
                )
    if halt is not None:
        problems.append(f"risk halt is set ({keys.risk_halt}): the trader stops opening positions")
    if dead["newest_age_ms"] is not None and dead["newest_age_ms"] < limits.dead_window_ms:
        problems.append(
            f"dead letter {fmt_ms(dead['newest_age_ms'])} ago ({dead['total']} in {keys.dead}; see "
            "mmops dead list)"
        )
    if lease["holder"] is None:
        warnings.append("no live sweeper lease: is a sweeper running?")
    return {
        "ts": now,
        "healthy": not problems,
        "problems": problems,
        "warnings": warnings,
        "shards": shards,
        "streams": streams,
        "dead_letters": {k: v for k, v in dead.items() if k != "by_group"},
        "sweeper_lease": lease,
        "risk_halt": halt,
        "rate_budget": budgets,
        "ended_sessions": ended,
    }


def _shard_row(shard: int, stream: dict[str, Any]) -> dict[str, Any]:
    """One shard of the input stream: length, groups, pending over its groups, largest lag."""
    groups = stream["groups"]
    lags = [g["lag"] for g in groups]
    return {
        "shard": shard,
        "stream": stream["stream"],
        "length": stream["length"],
        "groups": len(groups),
        "pending": sum(g["pending"] for g in groups),
        "lag": None if None in lags else max(lags, default=0),
    }


async def _stream(
    redis: AnyRedis,
    keys: Keys,
    stream: str,
    now: int,
    stuck_ms: int,
    limits: Thresholds,
    dead_by_group: dict[str, int],
) -> dict[str, Any]:
    try:
        info = await redis.xinfo_stream(stream)
        groups = await redis.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise
        return {"stream": stream, "length": 0, "last_id": None, "groups": []}
    last_id = as_text(info.get("last-generated-id") or "0-0")
    out: list[dict[str, Any]] = []
    for g in groups:
        name = as_text(g["name"])
        consumers = await _consumers(redis, keys, stream, name, now, limits)
        oldest = await redis.xpending_range(stream, name, min="-", max="+", count=1)
        stuck = await redis.xpending_range(stream, name, min="-", max="+", count=100, idle=stuck_ms)
        lag = g.get("lag")
        delivered = as_text(g.get("last-delivered-id") or "0-0")
        out.append(
            {
                "group": name,
                "consumers": consumers,
                "live": sum(1 for c in consumers if c["live"]),
                "pending": int(g.get("pending") or 0),
                "oldest_pending_id": as_text(oldest[0]["message_id"]) if oldest else None,
                "oldest_pending_age_ms": now - stream_id(as_text(oldest[0]["message_id"]))[0]
                if oldest
                else None,
                "oldest_pending_idle_ms": int(oldest[0]["time_since_delivered"])
                if oldest
                else None,
                "stuck": len(stuck),
                "lag": None if lag is None else int(lag),
                "last_delivered_id": delivered,
                "behind": stream_id(delivered) < stream_id(last_id),
                "dead_letters": dead_by_group.get(name, 0),
            }
        )
    return {
        "stream": stream,
        "length": int(info.get("length") or 0),
        "last_id": last_id,
        "groups": out,
    }


async def _consumers(
    redis: AnyRedis, keys: Keys, stream: str, group: str, now: int, limits: Thresholds
) -> list[dict[str, Any]]:
    rows = await redis.xinfo_consumers(stream, group)
    scored: Any = await redis.zrange(keys.heartbeats(group), 0, -1, withscores=True)
    beats = {as_text(m): int(score) for m, score in scored}
    out: list[dict[str, Any]] = []
    for row in rows:
        name = as_text(row["name"])
        beat = beats.pop(name, None)
        age = None if beat is None else max(0, now - beat)
        out.append(
            {
                "name": name,
                "pending": int(row.get("pending") or 0),
                "idle_ms": int(row.get("idle") or 0),
                "heartbeat_age_ms": age,
                "live": age is not None and age < limits.live_after_ms,
            }
        )
    for name, beat in beats.items():  # heartbeating but never read from this group yet
        age = max(0, now - beat)
        out.append(
            {
                "name": name,
                "pending": 0,
                "idle_ms": None,
                "heartbeat_age_ms": age,
                "live": age < limits.live_after_ms,
            }
        )
    out.sort(key=lambda c: (not c["live"], c["name"]))
    return out


async def _dead_letters(redis: AnyRedis, keys: Keys, now: int) -> dict[str, Any]:
    total = int(await redis.xlen(keys.dead))
    newest = entries_of(await redis.xrevrange(keys.dead, count=DEAD_SCAN))
    by_group: dict[str, int] = {}
    for _, fields in newest:
        group = as_text(fields.get(b"group", b"?"))
        by_group[group] = by_group.get(group, 0) + 1
    newest_id = newest[0][0] if newest else None
    return {
        "total": total,
        "newest_id": newest_id,
        "newest_age_ms": None if newest_id is None else max(0, now - stream_id(newest_id)[0]),
        "by_group": by_group,
    }


async def _rate_budgets(redis: AnyRedis, keys: Keys, settings: Settings) -> dict[str, Any] | None:
    """Each pair's share of the exchange's trading-rate counter (Kraken only)."""
    budget = make_rate_budget(settings, redis, keys)
    if budget is None:
        return None
    pairs = [
        {
            "symbol": p.symbol,
            "used": str(p.used.quantize(Decimal("0.01"))),
            "free": str(p.free.quantize(Decimal("0.01"))),
            "limit": str(p.limit),
            "refill_ms": p.refill_ms,
            "open_orders": p.open_orders,
            "open_cap": p.open_cap,
        }
        for p in await budget.state()
    ]
    return {
        "tier": budget.tier.name,
        "reserve_percent": str(budget.reserve_percent),
        "pairs": pairs,
    }


async def _lease(redis: AnyRedis, keys: Keys) -> dict[str, Any]:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.get(keys.sweeper_lease)
        pipe.pttl(keys.sweeper_lease)
        holder, ttl = await pipe.execute()
    return {
        "holder": None if holder is None else as_text(holder)[:120],
        "ttl_ms": None if holder is None or int(ttl) < 0 else int(ttl),
    }


# --- rendering ---------------------------------------------------------------------------
def render(report: dict[str, Any]) -> str:
    lines: list[str] = []
    shards = report.get("shards", [])
    if len(shards) > 1:
        rows = [
            [
                s["shard"],
                s["stream"],
                s["length"],
                s["groups"],
                s["pending"],
                "?" if s["lag"] is None else s["lag"],
            ]
            for s in shards
        ]
        lines.append(f"input stream: {len(shards)} shards")
        table = render_table(["SHARD", "STREAM", "LENGTH", "GROUPS", "PENDING", "LAG"], rows)
        lines += [_indent(table), ""]
    for stream in report["streams"]:
        last = stream["last_id"]
        when = (
            f", last {last} ({fmt_ms(report['ts'] - stream_id(last)[0])} ago)"
            if last and last != "0-0"
            else ""
        )
        lines.append(f"stream {stream['stream']}: {stream['length']} entries{when}")
        if not stream["groups"]:
            lines.append("  (no consumer groups)")
            continue
        rows = [
            [
                g["group"],
                len(g["consumers"]),
                g["live"],
                g["pending"],
                "-"
                if g["oldest_pending_age_ms"] is None
                else f"{fmt_ms(g['oldest_pending_age_ms'])} "
                f"(idle {fmt_ms(g['oldest_pending_idle_ms'])})",
                "?" if g["lag"] is None else g["lag"],
                g["dead_letters"],
            ]
            for g in stream["groups"]
        ]
        lines.append(
            _indent(
                render_table(
                    ["GROUP", "CONSUMERS", "LIVE", "PENDING", "OLDEST PENDING", "LAG", "DEAD"], rows
                )
            )
        )
        consumers = [
            [
                c["name"],
                g["group"],
                "-" if c["idle_ms"] is None else fmt_ms(c["idle_ms"]),
                "-" if c["heartbeat_age_ms"] is None else fmt_ms(c["heartbeat_age_ms"]),
                c["pending"],
                "live" if c["live"] else "gone",
            ]
            for g in stream["groups"]
            for c in g["consumers"]
        ]
        if consumers:
            lines.append(
                _indent(
                    render_table(
                        ["CONSUMER", "GROUP", "IDLE", "HEARTBEAT", "PENDING", "STATE"], consumers
                    )
                )
            )
    lines.append("")
    lease = report["sweeper_lease"]
    if lease["holder"] is None:
        lines.append("sweeper lease: none")
    else:
        expiry = "" if lease["ttl_ms"] is None else f" (expires in {fmt_ms(lease['ttl_ms'])})"
        lines.append(f"sweeper lease: {lease['holder']}{expiry}")
    halt = report["risk_halt"]
    lines.append(
        "risk halt: off" if halt is None else f"risk halt: ON {orjson.dumps(halt).decode()[:200]}"
    )
    lines += _render_budgets(report.get("rate_budget"))
    dead = report["dead_letters"]
    newest = (
        "" if dead["newest_age_ms"] is None else f" (newest {fmt_ms(dead['newest_age_ms'])} ago)"
    )
    lines.append(f"dead letters: {dead['total']}{newest}")
    if "ended_sessions" in report:
        lines += ended_sessions.render(report["ended_sessions"], report["ts"])
    lines.append("")
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    if report["healthy"]:
        lines.append("healthy")
    else:
        lines.append("UNHEALTHY:")
        lines += [f"  - {problem}" for problem in report["problems"]]
    return "\n".join(lines)


def _render_budgets(budgets: dict[str, Any] | None) -> list[str]:
    if budgets is None:
        return []
    head = (
        f"rate budget: tier {budgets['tier']}, {budgets['reserve_percent']} % kept for the trader"
    )
    if not budgets["pairs"]:
        return [f"{head}; no pair spent yet"]
    rows = [
        [
            p["symbol"],
            f"{p['used']} / {p['limit']}",
            p["free"],
            fmt_ms(p["refill_ms"]),
            f"{p['open_orders']} / {p['open_cap']}",
        ]
        for p in budgets["pairs"]
    ]
    table = render_table(["PAIR", "USED", "FREE", "REFILL", "OPEN ORDERS"], rows)
    return [head + ":", _indent(table)]


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _json_or_text(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return as_text(raw)
