"""Fuzzing the input path: hostile entries among valid ones, through the real runtimes.

    python -m bench.fuzz --entries 10000 [--seed 1] [--valid-every 10] [--huge 2]

XADDs `--entries` hostile entries (bench/hostile.py: each a plausible event with one
fault) interleaved with valid sessions (session_started, buy fills, session_ended), under
a key prefix of its own, to the real Redis; drains the coverage group, then the migrator
group, with the registry's runtimes (workers/groups.py) on the paper exchange; then
checks docs/contract.md §1 on what is left:

- no runtime raised, no handler failed, nothing is pending in either group;
- every hostile entry is in `mm:dead` exactly once (by its stream id), with a reason,
  its kept fields at most MAX_ENTRY_BYTES and a prefix of what was sent;
- no valid entry is dead; every valid buy fill has its TP (`created` in mm:takeprofits);
  every valid session reached PostgreSQL;
- Redis's used_memory grew by no more than the input, plus a bounded record per entry.

Prints a table (kind, sent, dead-lettered, a reason) and exits 1 on any mismatch.
tests/test_fuzz_input.py runs the same on the test's Redis and schema.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from bench.hostile import Pairs, flat, hostile_entries

VALID = "valid"
SEND_BYTES = 8_000_000  # XADDs are pipelined up to this many bytes a round trip
SEND_COUNT = 1000
_META = (b"stream", b"id", b"group", b"error", b"deliveries")
# What processing may add to Redis, whatever an entry's size: a hostile entry's dead record
# keeps at most MAX_ENTRY_BYTES of it, plus the record's own fields, its alert and its
# once-marker; a valid fill its TP, position and paper order (measured: ~4 kB).
RECORD_BYTES = 1000
VALID_BYTES = 8000
SLACK_BYTES = 4_000_000  # the groups, heartbeats, the paper exchange's markets
SHARED_SLACK_BYTES = 32_000_000  # used_memory: the allocator, other tenants of a shared Redis
GROUPS = ("coverage", "migrator")
PAIRS = {"BTC/USD": ("64000.5", "0.01"), "ETH/USD": ("3200.25", "0.5")}


@dataclass
class Item:
    kind: str  # a hostile kind, or "valid"
    pairs: Pairs
    event: str  # the type the entry is built on
    sid: str = ""
    order_id: str = ""  # a valid buy fill's position
    id: str = ""  # its stream id, once sent

    @property
    def hostile(self) -> bool:
        return self.kind != VALID

    @property
    def size(self) -> int:
        return sum(len(k) + len(v) for k, v in self.pairs)


def _valid(fields: dict[str, str], sid: str, order_id: str = "") -> Item:
    pairs = [(k.encode(), v.encode()) for k, v in fields.items()]
    return Item(VALID, pairs, fields["type"], sid, order_id)


def valid_sessions(rng: random.Random, count: int, fills: int, now_ms: int) -> list[list[Item]]:
    """`count` sessions, each started, `fills` buy fills (a position each), ended."""
    run = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    out = []
    for s in range(count):
        sid = f"fz-{run}-{s}"
        items = [
            _valid(
                {"type": "session_started", "session_id": sid, "pairs": ",".join(PAIRS)}
                | {"ts": str(now_ms)},
                sid,
            )
        ]
        for f in range(fills):
            symbol = rng.choice(list(PAIRS))
            price, quantity = PAIRS[symbol]
            fill = {
                "type": "fill",
                "session_id": sid,
                "fill_id": f"f-{f}",
                "order_id": f"o-{f}",
                "symbol": symbol,
                "side": "buy",
                "price": price,
                "quantity": quantity,
                "fee": "0.16",
                "ts": str(now_ms + f),
            }
            items.append(_valid(fill, sid, f"o-{f}"))
        ended = {"type": "session_ended", "session_id": sid, "ts": str(now_ms + fills)}
        items.append(_valid(ended | {"fills": str(fills)}, sid))
        out.append(items)
    return out


def build_input(
    rng: random.Random,
    entries: int,
    *,
    now_ms: int,
    valid_every: int = 10,
    fills_per_session: int = 20,
    max_huge: int = 2,
) -> list[Item]:
    """`entries` hostile entries and about entries / valid_every valid ones, mixed at
    random; each session's own events stay in order. A third of the hostile entries name a
    valid session (a dead letter must leave it as it was)."""
    sessions = valid_sessions(
        rng, max(1, entries // valid_every // (fills_per_session + 2)), fills_per_session, now_ms
    )
    sids = [items[0].sid for items in sessions]
    named = entries // 3
    made = hostile_entries(rng, named, max_huge=0, sessions=sids)
    made += hostile_entries(rng, entries - named, max_huge=max_huge)
    rng.shuffle(made)
    hostile = [Item(kind, pairs, _type_of(pairs)) for kind, pairs in made]
    # the sessions' events round-robin, in order within each session
    valid: list[Item] = []
    for step in range(max(len(items) for items in sessions)):
        valid += [items[step] for items in sessions if step < len(items)]
    out: list[Item] = []
    h = v = 0
    while h < len(hostile) or v < len(valid):
        left_h, left_v = len(hostile) - h, len(valid) - v
        if rng.random() * (left_h + left_v) < left_h:
            out.append(hostile[h])
            h += 1
        else:
            out.append(valid[v])
            v += 1
    return out


def _type_of(pairs: Pairs) -> str:
    for name, value in pairs:
        if name == b"type":
            return value.decode("utf-8", "replace")[:20]
    return "?"


async def send(redis: aioredis.Redis, stream: str, items: Sequence[Item]) -> None:
    """XADD every item's raw pairs (repeated names kept), pipelined; sets each item's id."""
    start = 0
    while start < len(items):
        end, size = start, 0
        while end < len(items) and end - start < SEND_COUNT and size < SEND_BYTES:
            size += items[end].size
            end += 1
        async with redis.pipeline(transaction=False) as pipe:
            for item in items[start:end]:
                pipe.execute_command("XADD", stream, "*", *flat(item.pairs))
            ids = await pipe.execute()
        for item, entry_id in zip(items[start:end], ids, strict=True):
            item.id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        start = end


async def used_memory(redis: aioredis.Redis) -> int:
    info: dict[str, Any] = await redis.info("memory")
    return int(info["used_memory"])


@dataclass
class Row:
    sent: int = 0
    dead: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass
class Report:
    rows: dict[str, Row] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # per group: processed, dead, failed
    fills: int = 0
    covered: int = 0
    sessions: int = 0
    migrated: int = 0
    pending: dict[str, int] = field(default_factory=dict)
    input_bytes: int = 0
    stream_bytes: int = 0  # MEMORY USAGE of the input stream
    added_bytes: int = 0  # MEMORY USAGE of every other key of the run
    added_bound: int = 0
    memory_growth: int = 0  # INFO used_memory, after - before
    memory_bound: int = 0
    seconds: float = 0.0

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)
        elif len(self.problems) == 50:
            self.problems.append("... more problems left out")

    @property
    def ok(self) -> bool:
        return not self.problems and not self.crashes


async def drain_groups(app: Any, report: Report, groups: Sequence[str] = GROUPS) -> None:
    """Each group's runtimes, from the registry, until drained; one that raises is a crash."""
    from workers.groups import runtimes_for

    for group in groups:
        runtimes = await runtimes_for(group, app, f"fuzz-{group}")
        try:
            stats = await runtimes.run(until_drained=True)
            report.stats[group] = {"processed": stats.processed, "dead": stats.dead}
            report.stats[group]["failed"] = stats.failed
            if stats.failed:
                report.problem(f"{group}: {stats.failed} handler failures: {stats.errors[-3:]}")
        except Exception as exc:  # the runtime died: what the fuzzing looks for
            report.crashes.append(f"{group}: {type(exc).__name__}: {exc}"[:300])
        finally:
            await runtimes.aclose()


def _raw(redis: aioredis.Redis) -> aioredis.Redis:
    """A client on `redis`'s pool whose XRANGE keeps every field pair (a dead record may
    repeat a name: it keeps the entry's own fields)."""
    reader = aioredis.Redis(connection_pool=redis.connection_pool)
    reader.set_response_callback("XRANGE", lambda response, **_: response)
    return reader


async def dead_records(redis: aioredis.Redis, stream: str) -> list[list[tuple[bytes, bytes]]]:
    reader = _raw(redis)
    out: list[list[tuple[bytes, bytes]]] = []
    start = "-"
    while True:
        rows = await reader.execute_command("XRANGE", stream, start, "+", "COUNT", 1000)
        for _, parts in rows:
            out.append(list(zip(parts[0::2], parts[1::2], strict=True)))
        if len(rows) < 1000:
            return out
        last = rows[-1][0].decode()
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


def check_record(item: Item, record: list[tuple[bytes, bytes]], max_bytes: int) -> list[str]:
    """What is wrong with one dead record of `item` (contract §1, §2)."""
    meta = dict(record[: len(_META)])
    kept = record[len(_META) :]
    if kept and kept[0][0] == b"truncated":
        kept = kept[1:]
    wrong = []
    if [k for k, _ in record[: len(_META)]] != list(_META) or not meta[b"error"].strip():
        wrong.append(f"{item.id} ({item.kind}): record without its reason: {record[:6]}")
    if sum(len(k) + len(v) for k, v in kept) > max_bytes:
        wrong.append(f"{item.id} ({item.kind}): dead record keeps more than {max_bytes} bytes")
    for (name, value), (sent_name, sent_value) in zip(kept, item.pairs, strict=False):
        if name.removeprefix(b"orig_") != sent_name or not sent_value.startswith(value):
            wrong.append(f"{item.id} ({item.kind}): kept fields are not the entry's own")
            break
    return wrong


async def check(app: Any, items: Sequence[Item], report: Report) -> None:
    redis, keys = app.redis, app.keys
    max_bytes = app.settings.max_entry_bytes
    by_id = {item.id: item for item in items}
    records: dict[str, list[list[tuple[bytes, bytes]]]] = {}
    for record in await dead_records(redis, keys.dead):
        fields = dict(record[: len(_META)])
        if fields.get(b"stream", b"").decode() == keys.stream:
            records.setdefault(fields[b"id"].decode(), []).append(record)
    for item in items:
        row = report.rows.setdefault(item.kind, Row())
        row.sent += 1
        found = records.get(item.id, [])
        row.dead += len(found)
        if not item.hostile:
            if found:
                report.problem(f"valid {item.event} {item.id} dead-lettered: {found[0][3]}")
            continue
        if len(found) != 1:
            report.problem(f"{item.id} ({item.kind}) is in mm:dead {len(found)} times")
            continue
        row.reasons[dict(found[0][: len(_META)])[b"error"].decode()[:70]] += 1
        for wrong in check_record(item, found[0], max_bytes):
            report.problem(wrong)
    for mid in records.keys() - by_id.keys():
        report.problem(f"mm:dead names {mid}, which was not sent")
    await _check_valid(app, items, report)
    for group in GROUPS:
        summary = await redis.xpending(keys.stream, group)
        report.pending[group] = int(summary["pending"])
        if summary["pending"]:
            report.problem(f"group {group}: {summary['pending']} entries pending")
        left = await redis.hlen(keys.failures(group, keys.stream))
        if left:
            report.problem(f"group {group}: {left} failure counts left")


async def _check_valid(app: Any, items: Sequence[Item], report: Report) -> None:
    redis, keys = app.redis, app.keys
    covered: set[tuple[str, str]] = set()
    for _, fields in await redis.xrange(keys.takeprofits):
        if fields.get(b"type") == b"created":
            covered.add((fields[b"session_id"].decode(), fields[b"position_id"].decode()))
    fills = [i for i in items if not i.hostile and i.event == "fill"]
    report.fills = len(fills)
    report.covered = sum((i.sid, i.order_id) in covered for i in fills)
    for item in fills:
        if (item.sid, item.order_id) not in covered:
            report.problem(f"valid fill {item.id} ({item.sid} {item.order_id}) has no TP")
    sids = sorted({i.sid for i in items if not i.hostile})
    report.sessions = len(sids)
    if "migrator" in report.stats:
        async with redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.exists(keys.migration_completed(sid))
            done = await pipe.execute()
        report.migrated = sum(done)
        for sid, migrated in zip(sids, done, strict=True):
            if not migrated:
                report.problem(f"valid session {sid} not migrated")


async def fuzz(app: Any, items: Sequence[Item], groups: Sequence[str] = GROUPS) -> Report:
    """Send `items`, drain `groups`, check; the report (report.ok: all as the contract says)."""
    report = Report(input_bytes=sum(item.size for item in items))
    before = await used_memory(app.redis)
    started = time.perf_counter()
    await send(app.redis, app.keys.stream, items)
    await drain_groups(app, report, groups)
    report.seconds = time.perf_counter() - started
    report.memory_growth = await used_memory(app.redis) - before
    await check_memory(app, items, report)
    await check(app, items, report)
    return report


async def check_memory(app: Any, items: Sequence[Item], report: Report) -> None:
    """Redis holds the input (until retention trims it) and, per entry, a bounded record:
    nothing proportional to an entry's size beyond MAX_ENTRY_BYTES. Exact per key (MEMORY
    USAGE of this run's keys), and loosely on the whole server (INFO used_memory)."""
    redis, keys = app.redis, app.keys
    max_bytes = app.settings.max_entry_bytes
    report.stream_bytes = await redis.memory_usage(keys.stream, samples=0) or 0
    async for key in redis.scan_iter(match=f"{keys.prefix}*", count=5000):
        if key.decode() != keys.stream:
            report.added_bytes += await redis.memory_usage(key, samples=0) or 0
    report.added_bound = SLACK_BYTES + sum(
        min(item.size, max_bytes) + RECORD_BYTES if item.hostile else VALID_BYTES for item in items
    )
    report.memory_bound = report.stream_bytes + report.added_bound + SHARED_SLACK_BYTES
    if report.added_bytes > report.added_bound:
        report.problem(
            f"processing added {report.added_bytes} bytes to Redis, more than the bound "
            f"{report.added_bound} (input {report.input_bytes} bytes)"
        )
    if report.memory_growth > report.memory_bound:
        report.problem(
            f"Redis used_memory grew by {report.memory_growth} bytes, more than the bound "
            f"{report.memory_bound} (input stream {report.stream_bytes} bytes)"
        )


def table(report: Report) -> str:
    lines = [f"{'KIND':<24} {'SENT':>6} {'DEAD':>6}  REASON (a sample)"]
    for kind in sorted(report.rows, key=lambda k: (k == VALID, k)):
        row = report.rows[kind]
        # a price's reason, where the kind has one, says more than a ts's
        ranked = sorted(row.reasons, key=lambda r: (not r.startswith("price:"), -row.reasons[r]))
        sample = ranked[0] if ranked else "-"
        lines.append(f"{kind:<24} {row.sent:>6} {row.dead:>6}  {sample}")
    hostile = sum(r.sent for k, r in report.rows.items() if k != VALID)
    dead = sum(r.dead for r in report.rows.values())
    lines.append(f"{'hostile, all kinds':<24} {hostile:>6} {dead:>6}")
    lines += [
        "",
        f"valid buy fills with their TP: {report.covered} of {report.fills}",
        f"valid sessions migrated: {report.migrated} of {report.sessions}",
        f"groups: {report.stats}",
        f"pending after the drain: {report.pending}",
        f"runtime crashes: {len(report.crashes)}",
        *(f"  {crash}" for crash in report.crashes),
        f"input {report.input_bytes / 1e6:.1f} MB, its stream {report.stream_bytes / 1e6:.1f} MB "
        f"in Redis; processing added {report.added_bytes / 1e6:.1f} MB "
        f"(bound {report.added_bound / 1e6:.1f} MB); used_memory grew "
        f"{report.memory_growth / 1e6:.1f} MB (bound {report.memory_bound / 1e6:.1f} MB)",
        f"sent and drained in {report.seconds:.1f} s",
    ]
    if report.problems:
        lines += ["", f"MISMATCHES ({len(report.problems)}):", *report.problems]
    else:
        lines += ["", "every hostile entry dead-lettered once; every valid one processed"]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    import asyncpg

    from base import logs
    from base.settings import Settings
    from mmops.app import App

    logs.setup("ERROR")  # a warning per dead letter otherwise
    token = uuid.uuid4().hex[:8]
    base = Settings.from_env()
    schema = f"bench_fuzz_{token}"
    conn = await asyncpg.connect(base.database_url)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    sep = "&" if "?" in base.database_url else "?"
    settings = Settings.from_env(
        {
            **_environ(),
            "MM_KEY_PREFIX": f"bench-fuzz:{token}:",
            "DATABASE_URL": f"{base.database_url}{sep}search_path={schema}",
            "DEAD_MAXLEN": str(max(10_000, 2 * args.entries)),
            "PAPER_BALANCES": "USD=100000000",
        }
    )
    app = await App.open(settings)
    try:
        items = build_input(
            random.Random(args.seed),
            args.entries,
            now_ms=app.clock.now_ms(),
            valid_every=args.valid_every,
            max_huge=args.huge,
        )
        report = await fuzz(app, items)
        print(table(report))
        return 0 if report.ok else 1
    finally:
        async for key in app.redis.scan_iter(match=f"{settings.key_prefix}*", count=5000):
            await app.redis.unlink(key)
        await app.close()
        conn = await asyncpg.connect(base.database_url)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


def _environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MM_")}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--entries", type=int, default=10_000, help="hostile entries (default 10000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--valid-every", type=int, default=10, help="one valid entry per N hostile")
    p.add_argument("--huge", type=int, default=2, help="10 MB entries at most (default 2)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
