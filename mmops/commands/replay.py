"""`mmops replay`: re-run a range of the input stream through a worker's handler.

`mmops replay --group coverage|migrator --from ID [--to ID]` reads the range with
XRANGE and calls the group's handler on each entry directly, lanes concurrently and
each lane in stream order, as the runtime does. It never reads, acks or claims through
the consumer group, so the group's position and pending entries are untouched. With
the invariants (docs/contract.md §4) a range that was already processed causes no effects; the
command reports the effects it did cause, measured by before/after counts over the
replayed sessions.

`mmops replay --reset GROUP --to ID` moves the group itself (XGROUP SETID): every entry
after ID is delivered to the group again, for a full reprocess by the running workers.

With MM_STREAM_SHARDS > 1 both act on every shard of the input stream, shard by shard
(ids are times, so one range means the same on each; a session's entries all lie in its
shard), or on one with `--shard N`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
from redis.exceptions import ResponseError

from base.settings import Settings
from events import Event, EventError
from events.codec import session_of
from mmops import runner
from mmops.app import App
from mmops.commands.simulate import StatusLine
from mmops.reporting import render_table
from storage import postgres
from storage.redis import as_text, entries_of, stream_id
from workers.groups import INPUT_GROUPS, runtimes_for
from workers.runtime import Entry, Runtime

GROUPS = INPUT_GROUPS
PAGE = 200
_START = re.compile(r"-|\d{1,20}(-\d{1,20})?")
_END = re.compile(r"\+|\d{1,20}(-\d{1,20})?")
_SETID = re.compile(r"\$|\d{1,20}(-\d{1,20})?")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser(
        "replay",
        help="re-run a range of the stream through a worker's handler (no ack, no claim)",
        description="Re-runs entries FROM..TO (inclusive; '-' and '+' are the ends, an id may be "
        "MS or MS-SEQ) through the coverage or migrator handler and reports the effects. "
        "--reset GROUP --to ID moves the group instead (XGROUP SETID) for a full reprocess.",
    )
    what = cmd.add_mutually_exclusive_group(required=True)
    what.add_argument("--group", choices=GROUPS, help="the worker whose handler re-runs the range")
    what.add_argument(
        "--reset", choices=GROUPS, metavar="GROUP", help="move this group to --to (XGROUP SETID)"
    )
    cmd.add_argument(
        "--from", dest="start", metavar="ID", help="first entry id (required with --group)"
    )
    cmd.add_argument(
        "--to", dest="end", metavar="ID", help="last entry id (default: the end of the stream)"
    )
    cmd.add_argument(
        "--shard",
        type=int,
        metavar="N",
        help="only shard N of the input stream (MM_STREAM_SHARDS > 1; default: every shard)",
    )
    cmd.set_defaults(func=_replay)


def _replay(args: argparse.Namespace) -> int:
    shard: int | None = args.shard
    if args.reset:
        if args.end is None or not _SETID.fullmatch(args.end) or args.start is not None:
            return _usage("--reset GROUP needs --to ID (an entry id, 0 or $) and no --from")
        return runner.run(lambda s: reset(s, args.reset, args.end, shard))
    if args.start is None or not _START.fullmatch(args.start):
        return _usage("--from: expected an entry id (MS or MS-SEQ) or '-'")
    end = args.end or "+"
    if not _END.fullmatch(end):
        return _usage("--to: expected an entry id (MS or MS-SEQ) or '+'")
    return runner.run(lambda s: _run(s, args.group, args.start, end, shard))


def _bad_shard(settings: Settings, shard: int | None) -> bool:
    """--shard out of range: the usage line is printed."""
    if shard is None or 0 <= shard < settings.stream_shards:
        return False
    last = settings.stream_shards - 1
    _usage(f"--shard: expected 0..{last} (MM_STREAM_SHARDS={settings.stream_shards})")
    return True


def _usage(message: str) -> int:
    print(f"mmops replay: {message}", file=sys.stderr)
    return 2


async def _run(settings: Settings, group: str, start: str, end: str, shard: int | None) -> int:
    if _bad_shard(settings, shard):
        return 2
    app = await App.open(settings)
    try:
        line = StatusLine(sys.stderr, every=5.0)
        result = await replay(app, group, start, end, shard=shard, progress=line.show)
        line.close()
    finally:
        await app.close()
    print(result.render())
    return 1 if result.failed else 0


# --- replaying --------------------------------------------------------------------------
@dataclass
class ReplayResult:
    stream: str
    group: str
    first: str | None = None
    last: str | None = None
    entries: int = 0
    handled: int = 0
    invalid: int = 0
    deferred: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    effects: dict[str, int] = field(default_factory=dict)

    @property
    def total_effects(self) -> int:
        return sum(self.effects.values())

    def render(self) -> str:
        span = f" ({self.first} .. {self.last})" if self.first else ""
        lines = [
            f"re-ran {self.entries} entries of {self.stream}{span} through the {self.group} "
            f"handler: {self.handled} handled, {self.invalid} invalid (skipped), {self.deferred} "
            f"not ready, {self.failed} failed",
            f"effects: {self.total_effects} over {len(self.sessions)} sessions",
        ]
        rows = [[name, count] for name, count in self.effects.items()]
        lines.append(
            "\n".join("  " + row for row in render_table(["EFFECT", "NEW"], rows).splitlines())
        )
        lines += [f"error: {error}" for error in self.errors[:5]]
        return "\n".join(lines)


async def replay(
    app: App,
    group: str,
    start: str,
    end: str = "+",
    *,
    shard: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReplayResult:
    """Re-run XRANGE start..end through the group's handler, on every shard of the input
    stream (or `shard`), each through a runtime of its own; count what changed."""
    streams = app.keys.streams if shard is None else [app.keys.shard_stream(shard)]
    runtimes = await runtimes_for(group, app, "replay", draining=True, streams=streams)
    effects = _effects(app, group)
    result = ReplayResult(", ".join(streams), group)
    started = time.monotonic()
    try:
        await effects.start()
        for runtime in runtimes.runtimes:
            stream = runtime.stream
            last = await _last_id(app, stream, end)
            first: str | None = None
            async for page in _pages(app, stream, start, end):
                first = first or page[0].id
                result.first = min(result.first or first, first, key=stream_id)
                result.last = max(result.last or page[-1].id, page[-1].id, key=stream_id)
                new = {sid for sid in map(_session, page) if sid and sid not in result.sessions}
                if new:
                    await effects.add_sessions(new)  # counted before their entries are re-run
                    result.sessions |= new
                await _run_page(runtime, page, result)
                if progress is not None and last is not None and time.monotonic() - started > 1:
                    span = max(1, _ms(last) - _ms(first))
                    share = min(1.0, (_ms(page[-1].id) - _ms(first)) / span)
                    progress(
                        f"replay {group} on {stream}: {result.entries} entries, "
                        f"{share:.0%} of the range"
                    )
        result.effects = await effects.finish()
    finally:
        await runtimes.aclose()
    return result


async def _last_id(app: App, stream: str, end: str) -> str | None:
    if end != "+":
        return end
    newest = entries_of(await app.redis.xrevrange(stream, count=1))
    return newest[0][0] if newest else None


async def _pages(app: App, stream: str, start: str, end: str) -> AsyncIterator[list[Entry]]:
    cursor = start
    while True:
        page = entries_of(await app.redis.xrange(stream, min=cursor, max=end, count=PAGE))
        if not page:
            return
        yield [Entry(mid, list(fields.items()) or None) for mid, fields in page]
        if len(page) < PAGE:
            return
        cursor = "(" + page[-1][0]


async def _run_page(runtime: Runtime, entries: list[Entry], result: ReplayResult) -> None:
    """The page through the shared runtime's batch handling (lane order kept), acking nothing."""
    failed_before = runtime.stats.failed
    runtime.stats.errors.clear()  # this page's failures and deferrals only
    items: list[tuple[Entry, Event]] = []
    for entry in entries:
        result.entries += 1
        try:
            items.append((entry, runtime.decode(entry.fields)))
        except EventError:
            result.invalid += 1
    done = await runtime.handle_batch(items)
    result.handled += len(done)
    failed = runtime.stats.failed - failed_before
    result.failed += failed
    # not ready: deferred by the handler, or waiting behind an entry that was
    result.deferred += len(items) - len(done) - failed
    result.errors += runtime.stats.errors


# --- handlers and their effects ---------------------------------------------------------
class Effects(Protocol):
    async def start(self) -> None: ...

    async def add_sessions(self, sids: set[str]) -> None: ...

    async def finish(self) -> dict[str, int]:
        """Effect name -> how many new (after - before)."""
        ...


def _effects(app: App, group: str) -> Effects:
    return CoverageEffects(app) if group == "coverage" else MigratorEffects(app)


class CoverageEffects:
    """New mm:takeprofits entries of the replayed sessions, fills recorded, exchange orders."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.sessions: set[str] = set()
        self.fills_before = 0
        self.tp_mark = "0-0"
        self.orders_before = 0

    async def start(self) -> None:
        newest = entries_of(await self.app.redis.xrevrange(self.app.keys.takeprofits, count=1))
        self.tp_mark = newest[0][0] if newest else "0-0"
        self.orders_before = await self._orders()

    async def add_sessions(self, sids: set[str]) -> None:
        self.fills_before += await self._fills(sids)
        self.sessions |= sids

    async def finish(self) -> dict[str, int]:
        out = {
            "take-profit events": await self._takeprofit_events(),
            "fills recorded": await self._fills(self.sessions) - self.fills_before,
        }
        if self.app.settings.exchange == "paper":
            out["exchange orders"] = await self._orders() - self.orders_before
        return out

    async def _fills(self, sids: set[str]) -> int:
        async with self.app.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hlen(self.app.keys.fills(sid))
            return sum(int(n) for n in await pipe.execute())

    async def _orders(self) -> int:
        if self.app.settings.exchange != "paper":
            return 0
        return int(await self.app.redis.hlen(self.app.keys.paper("orders")))

    async def _takeprofit_events(self) -> int:
        total = 0
        cursor = "(" + self.tp_mark
        while True:
            page = entries_of(
                await self.app.redis.xrange(
                    self.app.keys.takeprofits, min=cursor, max="+", count=1000
                )
            )
            total += sum(1 for _, f in page if as_text(f.get(b"session_id", b"")) in self.sessions)
            if len(page) < 1000:
                return total
            cursor = "(" + page[-1][0]


class MigratorEffects:
    """Rows of the replayed sessions in sessions, orders, fills and session_pairs."""

    TABLES = (
        ("sessions", "id"),
        ("orders", "session_id"),
        ("fills", "session_id"),
        ("session_pairs", "session_id"),
    )

    def __init__(self, app: App) -> None:
        self.app = app
        self.sessions: set[str] = set()
        self.before: dict[str, int] = {}

    async def start(self) -> None:
        return None

    async def add_sessions(self, sids: set[str]) -> None:
        for name, count in (await self._rows(sids)).items():
            self.before[name] = self.before.get(name, 0) + count
        self.sessions |= sids

    async def finish(self) -> dict[str, int]:
        after = await self._rows(self.sessions)
        return {name: count - self.before.get(name, 0) for name, count in after.items()}

    async def _rows(self, sids: set[str]) -> dict[str, int]:
        conn = await postgres.connect(self.app.settings.database_url)
        try:
            out: dict[str, int] = {}
            for table, key in self.TABLES:
                try:
                    query = f"SELECT count(*) FROM {table} WHERE {key} = ANY($1::text[])"
                    out[f"{table} rows"] = int(await conn.fetchval(query, sorted(sids)))
                except asyncpg.UndefinedTableError:  # no schema yet: nothing written
                    out[f"{table} rows"] = 0
            return out
        finally:
            await conn.close()


# --- reset --------------------------------------------------------------------------------
async def reset(settings: Settings, group: str, to: str, shard: int | None = None) -> int:
    """XGROUP SETID on every shard (or `shard`): the group will be delivered every entry
    after `to` again. A shard without the group is named and left alone (exit status 1)."""
    if _bad_shard(settings, shard):
        return 2
    app = await App.open(settings)
    try:
        keys = app.keys
        code = 0
        for stream in keys.streams if shard is None else [keys.shard_stream(shard)]:
            try:
                groups = {as_text(g["name"]): g for g in await app.redis.xinfo_groups(stream)}
            except ResponseError:
                groups = {}
            if group not in groups:
                print(f"mmops replay: no group {group!r} on {stream}", file=sys.stderr)
                code = 1
                continue
            old = as_text(groups[group].get("last-delivered-id") or "0-0")
            await app.redis.xgroup_setid(stream, group, to)
            print(
                f"group {group} on {stream} moved from {old} to {to}: entries after {to} will be "
                "delivered again"
            )
        return code
    finally:
        await app.close()


def _session(entry: Entry) -> str | None:
    return session_of(entry.fields)


def _ms(entry_id: str) -> int:
    return stream_id(entry_id)[0]
