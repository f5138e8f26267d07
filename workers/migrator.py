"""The migrator: every finished session in PostgreSQL — complete, exactly once, fast.

On `session_ended` the handler waits until the coverage group has processed every
entry of that session up to and including the end (`coverage_backlog`), then
`migrate_session` streams the session's Redis state (storage/session_reader.py) into
one PostgreSQL transaction (storage/session_writer.py) and only then marks it
`migration:completed:{sid}`. The same function serves the sweeper's safety net and
`mmops migrate`.

Figures (docs/queries.sql documents them for analysts):
* realized P&L - per position: the sum over its sells of price * qty - sell fee -
  qty * unit cost (unit cost includes the buy fees), the position model's own definition;
* a *round trip* is one sell applied to one position (a TP fill, or a FIFO share of
  another sell); a *win* is one with P&L > 0; `avg_spread` is the mean over round trips
  of (sell price - unit cost) / unit cost;
* fees are in quote (a fee charged in the base asset is valued at the fill's price).
Money figures are rounded half-even to 1e-10 when stored; arithmetic before that is
exact (60-digit Decimal context).
"""

from __future__ import annotations

import contextlib
import enum
import gc
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal, InvalidOperation, localcontext
from typing import Protocol

import asyncpg
from redis.exceptions import ResponseError

from base import logs
from base.clock import Clock, iso
from base.logs import one_line
from base.settings import Settings
from events import Event, SessionEnded, SessionStarted
from events.codec import session_of
from storage import schema
from storage import session_reader as reader
from storage.keys import Keys
from storage.postgres import create_pool
from storage.redis import AnyRedis, ServerUnreachable, as_text
from storage.session_reader import (
    CloseRow,
    FillRow,
    PositionRow,
    SessionHeader,
    decode_fill_row,
    decode_position_row,
    ms_to_datetime,
)
from storage.session_writer import (
    FILL_COLUMNS,
    ORDER_COLUMNS,
    PairRow,
    PairTotals,
    SessionRow,
    SessionWriter,
    TimestampText,
    copy_line,
    upsert_started,
)
from trading.positions import COVERING, StepStatus
from workers.runtime import Entry, Lane, Retry, Transient

log = logs.get("mmops.migrator")

GROUP = "migrator"
COVERAGE_GROUP = "coverage"
MONEY = Decimal("1e-10")  # stored money figures and ratios: rounded half-even to this
PRICE = Decimal("1e-18")  # an order's average fill price: the events' own precision
FETCH = 2000  # fills per HMGET / HSCAN round trip
COVERAGE_WAIT_MS = 500
PENDING_PAGE = 200
PENDING_PAGES = 10
INCOMPLETE_BACKOFF_MS = (5_000, 600_000)  # first retry, ceiling

ZERO = Decimal(0)
_EXACT = Context(prec=60)

# Errors after which the same migration may succeed later: PostgreSQL is unreachable,
# restarting or full of connections. Anything else is a bug or bad data and is raised.
TRANSIENT_PG_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    ServerUnreachable,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)


class Parts(Protocol):
    """What migration needs from the process (mmops.app.App has it all)."""

    settings: Settings
    redis: AnyRedis
    keys: Keys
    clock: Clock

    async def alert(self, kind: str, message: str, **figures: object) -> None: ...


class Status(enum.StrEnum):
    MIGRATED = "migrated"  # written now (or re-written with force: nothing new is inserted twice)
    DRY_RUN = "dry_run"  # computed, nothing written
    ALREADY = "already"  # migration:completed is set (or PostgreSQL says it was migrated)
    WAITING = "waiting"  # the coverage group has not processed the session's events yet
    NOT_ENDED = "not_ended"  # no session_ended recorded
    INCOMPLETE = "incomplete"  # recorded fills differ from the trader's count (alerted)
    MISSING = "missing"  # the session's Redis state is gone and it is not migrated (alerted)
    FAILED = "failed"  # an error (set by callers that report errors as results: mmops migrate)


@dataclass(frozen=True, slots=True)
class MigrationResult:
    session_id: str
    status: Status
    reason: str = ""
    fills: int = 0  # the session's rows in PostgreSQL (dry run: rows it would have)
    orders: int = 0
    pairs: int = 0
    pnl: Decimal = ZERO
    fees: Decimal = ZERO
    duplicates: int = 0  # fills recorded twice under different ids, stored once
    new_fills: int = 0  # rows this run added
    new_orders: int = 0
    fast: bool = False  # written by COPY straight into the tables
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.status in (Status.MIGRATED, Status.DRY_RUN, Status.ALREADY)


async def migrate_session(
    parts: Parts,
    pool: asyncpg.Pool | None,
    sid: str,
    *,
    force: bool = False,
    dry_run: bool | None = None,
    wait_for_coverage: bool = True,
    expected_fills: int | None = None,
) -> MigrationResult:
    """Persist one ended session to PostgreSQL in one transaction, then mark it completed.

    `force` re-migrates a completed session (inserting nothing twice) and ignores a
    fill-count mismatch. `dry_run` (default: DRY_RUN) computes everything and writes
    nothing. `wait_for_coverage` checks that the coverage group has processed the
    session's events up to its end. PostgreSQL connection errors propagate
    (TRANSIENT_PG_ERRORS); the session is then not marked and can be re-run.
    """
    started = time.perf_counter()
    dry = parts.settings.dry_run if dry_run is None else dry_run
    header = await reader.read_header(parts.redis, parts.keys, sid)
    if header.completed_at and not force:
        await parts.redis.zrem(parts.keys.sessions_ended, sid)
        return MigrationResult(sid, Status.ALREADY, f"completed at {header.completed_at}")
    if not header.has_state:
        return await _state_missing(parts, pool, sid, dry)
    if header.ended_at is None:
        return MigrationResult(sid, Status.NOT_ENDED, "no session_ended recorded for it")
    if wait_for_coverage:
        reason = (
            await coverage_backlog(parts.redis, parts.keys.stream_for(sid), sid, header.end_id)
            if header.end_id
            else "the coverage group has not recorded the session's end"
        )
        if reason:
            return MigrationResult(sid, Status.WAITING, reason)
    expected = header.fills_expected if expected_fills is None else expected_fills
    if expected is not None and expected != header.fills and not force:
        reason = f"recorded {header.fills} fills, the trader reported {expected}"
        await parts.alert(
            "migration_incomplete",
            f"session {sid}: {reason}; not migrated (mmops migrate --session {sid} --force to migrate anyway)",
            session_id=sid,
            recorded=header.fills,
            expected=expected,
        )
        return MigrationResult(sid, Status.INCOMPLETE, reason)
    now = parts.clock.now_ms()
    if dry:
        plan = SessionMigration(parts.redis, parts.keys, header, now, Mode.DRY)
        await plan.run(_Discard())
        result = plan.result(Status.DRY_RUN, _ms_since(started))
        log.info(
            "dry run: would write session %s: %d fills, %d orders, %d pairs, P&L %s",
            sid,
            result.fills,
            result.orders,
            result.pairs,
            result.pnl,
            extra={"session_id": sid},
        )
        return result
    if pool is None:
        raise ValueError("migrate_session needs a PostgreSQL pool unless dry_run")
    async with pool.acquire() as conn:
        try:
            plan = await _write(conn, parts, header, now, staging=False)
        except asyncpg.UniqueViolationError as exc:
            # an id another session already uses (stored qualified by the staging path), or a
            # duplicate the in-memory filter could not see (the same number written differently)
            log.info(
                "session %s: %s; writing it through the staging path",
                sid,
                one_line(exc),
                extra={"session_id": sid},
            )
            plan = await _write(conn, parts, header, now, staging=True)
    result = plan.result(Status.MIGRATED, _ms_since(started))
    await _mark_completed(parts, sid, now, result)
    log.info(
        "migrated session %s: %d fills (%d new), %d orders (%d new) in %d ms%s",
        sid,
        result.fills,
        result.new_fills,
        result.orders,
        result.new_orders,
        result.duration_ms,
        " (fast path)" if result.fast else "",
        extra={"session_id": sid},
    )
    return result


async def coverage_backlog(
    redis: AnyRedis, stream: str, sid: str, upto: str, *, group: str = COVERAGE_GROUP
) -> str | None:
    """Why `group` has not yet processed every entry of `sid` up to `upto` in `stream` (the
    session's shard, `keys.stream_for(sid)`); None once it has.

    Processed = delivered (the group's last-delivered-id >= `upto`) and no longer
    pending (acked: handled or dead-lettered). Pending entries at or before `upto` are
    looked up to see whose they are; one whose payload is gone counts as this session's.
    """
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no stream yet
        return f"the stream {stream} does not exist"
    info = next((g for g in groups if as_text(g["name"]) == group), None)
    if info is None:
        return f"consumer group {group} does not exist yet"
    last = as_text(info["last-delivered-id"])
    if _stream_id(last) < _stream_id(upto):
        return f"{group} has not read up to {upto} yet (last delivered {last})"
    start = "-"
    for _ in range(PENDING_PAGES):
        rows = await redis.xpending_range(stream, group, min=start, max=upto, count=PENDING_PAGE)
        if not rows:
            return None
        ids = [as_text(row["message_id"]) for row in rows]
        async with redis.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.xrange(stream, mid, mid, count=1)
            found = await pipe.execute()
        for mid, entries in zip(ids, found, strict=True):
            owner = session_of(entries[0][1]) if entries else None
            if owner is None or owner == sid:
                return f"{group} has entry {mid} of session {sid} pending"
        if len(rows) < PENDING_PAGE:
            return None
        start = "(" + ids[-1]
    return f"{group} has more than {PENDING_PAGE * PENDING_PAGES} entries pending up to {upto}"


class MigratorHandler:
    """Consumer group `migrator`; lane = session. Upserts live sessions, migrates ended ones."""

    group = GROUP

    def __init__(self, parts: Parts, pool: asyncpg.Pool | None) -> None:
        self.parts = parts
        self.pool = pool
        self._attempts: dict[str, int] = {}

    @classmethod
    async def create(cls, parts: Parts) -> MigratorHandler:
        """Open the pool and upgrade the schema (not in DRY_RUN: no database writes then)."""
        if parts.settings.dry_run:
            return cls(parts, None)
        pool = await create_pool(
            parts.settings.database_url, max_size=parts.settings.migration_pool_size
        )
        try:
            async with pool.acquire() as conn:
                await schema.upgrade(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(parts, pool)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def lane(self, event: Event) -> Lane:
        return (event.session_id,)

    async def handle(self, entry: Entry, event: Event) -> None:
        try:
            match event:
                case SessionStarted():
                    if self.pool is not None:
                        await upsert_started(
                            self.pool, event.session_id, event.pairs, ms_to_datetime(event.ts)
                        )
                case SessionEnded():
                    await self.on_session_ended(entry, event)
                case _:
                    return
        except TRANSIENT_PG_ERRORS as exc:
            raise Transient(f"PostgreSQL unavailable: {one_line(exc)}") from exc

    async def on_session_ended(self, entry: Entry, event: SessionEnded) -> None:
        sid = event.session_id
        stream = self.parts.keys.stream_for(sid)  # the shard this entry came from
        reason = await coverage_backlog(self.parts.redis, stream, sid, entry.id)
        if reason:
            raise Retry(reason, after_ms=COVERAGE_WAIT_MS)
        result = await migrate_session(
            self.parts, self.pool, sid, wait_for_coverage=False, expected_fills=event.fills
        )
        if result.status in (Status.INCOMPLETE, Status.WAITING):
            attempts = self._attempts[sid] = self._attempts.get(sid, 0) + 1
            first, ceiling = INCOMPLETE_BACKOFF_MS
            raise Retry(result.reason, after_ms=min(ceiling, first * 2 ** (attempts - 1)))
        self._attempts.pop(sid, None)


# --- the migration of one session ----------------------------------------------------


async def _write(
    conn: asyncpg.Connection, parts: Parts, header: SessionHeader, now: int, *, staging: bool
) -> SessionMigration:
    async with SessionWriter(conn, header.session_id, staging=staging) as writer:
        plan = SessionMigration(
            parts.redis, parts.keys, header, now, Mode.FAST if writer.fast else Mode.STAGING
        )
        await plan.run(writer)
        if not writer.fast:  # PostgreSQL de-duplicated: counts and sums as the tables hold them
            plan.new_fills = await writer.merge_fills()
            await writer.derive_orders(plan.pairs, sorted(plan.tp_ids), sorted(plan.event_ids))
            plan.new_orders = await writer.merge_orders()
            plan.use_totals(await writer.totals())
        await writer.finish(plan.session_row(), plan.pair_rows())
    return plan


async def _state_missing(
    parts: Parts, pool: asyncpg.Pool | None, sid: str, dry: bool
) -> MigrationResult:
    if pool is not None and not dry:
        migrated = await pool.fetchval("SELECT migrated_at FROM sessions WHERE id = $1", sid)
        if migrated is not None:  # migrated earlier; only the Redis marker was lost
            # the marker, then the index (its own slot on a cluster): a crash in between
            # leaves the session in the index, and the next look at it removes it
            await parts.redis.set(
                parts.keys.migration_completed(sid), iso(int(migrated.timestamp() * 1000))
            )
            await parts.redis.zrem(parts.keys.sessions_ended, sid)
            return MigrationResult(
                sid, Status.ALREADY, f"in PostgreSQL since {migrated.isoformat()}"
            )
    reason = "no session hash, fills or positions in Redis and not migrated"
    await parts.alert("migration_state_missing", f"session {sid}: {reason}", session_id=sid)
    return MigrationResult(sid, Status.MISSING, reason)


async def _mark_completed(parts: Parts, sid: str, now: int, result: MigrationResult) -> None:
    """The session's marker and figures in one MULTI (its slot), then the global index: a
    crash in between leaves it in mm:sessions:ended, which the next look at it (completed
    already) removes."""
    keys = parts.keys
    async with parts.redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.migration_completed(sid), iso(now))
        pipe.hset(
            keys.metrics_migration(sid),
            mapping={
                "orders": result.orders,
                "fills": result.fills,
                "duration_ms": result.duration_ms,
                "duplicates": result.duplicates,
            },
        )
        await pipe.execute()
    await parts.redis.zrem(keys.sessions_ended, sid)


class Sink(Protocol):
    """Where a migration's COPY streams go: SessionWriter, or a dry run's discard."""

    async def copy(
        self, table: str, columns: Sequence[str], source: AsyncIterable[bytes]
    ) -> None: ...

    async def insert_fills(self, source: AsyncIterable[bytes]) -> list[str]: ...


class _Discard:
    """A dry run's sink: consumes the rows, writes nothing."""

    async def copy(self, table: str, columns: Sequence[str], source: AsyncIterable[bytes]) -> None:
        async for _ in source:
            pass

    async def insert_fills(self, source: AsyncIterable[bytes]) -> list[str]:
        raise AssertionError("a dry run de-duplicates exactly: it has no fills to check")


class Mode(enum.Enum):
    FAST = "fast"  # nothing stored yet: de-duplicate in memory, COPY into the tables
    STAGING = "staging"  # a re-run: PostgreSQL de-duplicates, totals come from the tables
    DRY = "dry"  # nothing written: exact de-duplication in memory


@dataclass
class _Figures:
    orders: int = 0
    fills: int = 0
    fees: Decimal = ZERO
    volume: Decimal = ZERO
    pnl: Decimal = ZERO
    round_trips: int = 0
    wins: int = 0
    spread_sum: Decimal = ZERO
    trade_fees: Decimal = ZERO


class _OrderFills:
    """A trader order as its fills tell it: quantity filled, notional, first fill."""

    __slots__ = ("first", "kind", "notional", "quantity", "side", "symbol")

    def __init__(self, fill: FillRow, quantity: Decimal, notional: Decimal) -> None:
        self.symbol = fill.symbol
        self.side = fill.side
        self.kind = fill.order_type or "unknown"
        self.quantity = quantity
        self.notional = notional
        self.first = fill.ts


class _Decimals:
    """Decimal(text), remembered: a session's prices, quantities and fees repeat, and building
    a Decimal costs several times a dict lookup."""

    def __init__(self, limit: int = 100_000) -> None:
        self.known: dict[str, Decimal] = {}
        self.limit = limit

    def __call__(self, text: str) -> Decimal:
        value = self.known.get(text)
        if value is None:
            if len(self.known) >= self.limit:
                self.known.clear()
            value = self.known[text] = Decimal(text)
        return value


class _ContentFilter:
    """Which content keys (the fills' UNIQUE key) were seen: a 2-bit filter, or an exact set.

    The filter costs 16 bytes per fill and answers "maybe" for a few new keys in 10^4;
    the fast path lets PostgreSQL settle those (INSERT ... ON CONFLICT DO NOTHING). Keys
    are compared as stored text: the same number written differently ("0.010", "0.01")
    is not caught here, and the fast path's COPY then fails on the UNIQUE constraint and
    the session is written again by the staging path.
    """

    def __init__(self, expected: int, *, exact: bool) -> None:
        self.exact: set[tuple[str, str, int, str, str]] | None = set() if exact else None
        size = 1 << max(16, (max(expected, 1) * 128 - 1).bit_length())
        self.mask = size - 1
        self.bits = bytearray(size >> 3)


@dataclass
class SessionMigration:
    """One pass over a session's Redis state: COPY rows for a sink, figures for the totals.

    `run` streams three COPYs: TP orders (from the positions, which also yield every
    applied fill id and the P&L of every sell), fills (fetched by HMGET in id order, so
    the indexes are filled in order; fills no position mentions are found by HSCAN),
    then the trader's orders (its events, else derived from its fills). Public for
    bench/migrate.py.
    """

    redis: AnyRedis
    keys: Keys
    header: SessionHeader
    now: int
    mode: Mode
    pairs: list[str] = field(default_factory=list)
    figures: dict[str, _Figures] = field(default_factory=dict)
    sell_pnl: dict[str, Decimal] = field(default_factory=dict)  # fill id -> P&L it realized
    fill_ids: list[str] = field(default_factory=list)  # ids the positions mention
    tp_ids: set[str] = field(default_factory=set)
    event_ids: set[str] = field(default_factory=set)
    derived: dict[str, _OrderFills] = field(default_factory=dict)  # fills of non-TP orders
    candidates: list[FillRow] = field(default_factory=list)  # fast path: maybe duplicates
    first_fill_ms: int | None = None
    uncovered: int = 0
    open_positions: int = 0
    new_fills: int = 0
    new_orders: int = 0

    def __post_init__(self) -> None:
        self.sid = self.header.session_id
        self.pairs = list(self.header.pairs)
        self._index = {symbol: i for i, symbol in enumerate(self.pairs)}
        for symbol in self.pairs:
            self.figure(symbol)
        self.ts = TimestampText()
        self.dec = _Decimals()
        self.filter = _ContentFilter(self.header.fills, exact=self.mode is Mode.DRY)

    @property
    def fast(self) -> bool:
        return self.mode is Mode.FAST

    async def run(self, sink: Sink) -> None:
        """Stream the rows to `sink`. On the staging path the orders known only from fills
        and the per-pair counts and sums are then left to SQL over the stored fills
        (SessionWriter.derive_orders, .totals); otherwise they are worked out here."""
        await sink.copy("orders", ORDER_COLUMNS, self._tp_orders())
        await sink.copy("fills", FILL_COLUMNS, self._fills())
        if self.candidates:
            await self._settle_candidates(sink)
        await sink.copy("orders", ORDER_COLUMNS, self._trader_orders())

    # --- figures ----------------------------------------------------------------------
    def figure(self, symbol: str) -> _Figures:
        found = self.figures.get(symbol)
        if found is None:
            found = self.figures[symbol] = _Figures()
            if symbol not in self._index:
                self._index[symbol] = len(self.pairs)
                self.pairs.append(symbol)
        return found

    @property
    def totals_fills(self) -> int:
        return sum(f.fills for f in self.figures.values())

    @property
    def totals_orders(self) -> int:
        return sum(f.orders for f in self.figures.values())

    def use_totals(self, totals: PairTotals) -> None:
        """Staging path: counts and sums as the tables now hold them."""
        for symbol in set(totals.fills) | set(totals.orders):
            self.figure(symbol)
        for symbol, figure in self.figures.items():
            figure.fills = totals.fills.get(symbol, 0)
            figure.fees = totals.fees.get(symbol, ZERO)
            figure.volume = totals.volume.get(symbol, ZERO)
            figure.orders = totals.orders.get(symbol, 0)
        if totals.first_fill is not None:
            self.first_fill_ms = int(totals.first_fill.timestamp() * 1000)

    # --- positions: TP orders, P&L, fill ids --------------------------------------------
    async def _tp_orders(self) -> AsyncIterator[bytes]:
        """Our TP orders, from the positions' steps (and any TP record they miss)."""
        async for raws in reader.scan_values(self.redis, self.keys.positions(self.sid)):
            lines: list[str] = []
            with _gc_paused(), localcontext(_EXACT):
                for raw in raws:
                    self._position(decode_position_row(raw), lines)
            if lines:
                yield _encode(lines, len(ORDER_COLUMNS))
        lines = []
        for record in await reader.tp_records(self.redis, self.keys, self.sid, skip=self.tp_ids):
            line = self._tp_record(record)
            if line:
                lines.append(line)
        if lines:
            yield _encode(lines, len(ORDER_COLUMNS))

    def _position(self, p: PositionRow, lines: list[str]) -> None:
        """Figures of one position, in one pass (the formulas of trading.positions.Position)."""
        figure = self.figures.get(p.symbol) or self.figure(p.symbol)
        ids, dec = self.fill_ids, self.dec
        filled = cost = fees = closed = covered = tp_filled = ZERO
        for buy in p.buys:
            qty, fee = dec(buy.qty), dec(buy.fee)
            cost += dec(buy.price) * qty + fee
            fees += fee
            filled += qty
            ids.append(buy.fill_id)
        unit = cost / filled if filled > 0 else None  # cost_per_unit: fees included
        fee_per_unit = fees / filled if filled > 0 else ZERO
        for close in p.closes:
            closed += dec(close.qty)
            ids.append(close.fill_id)
            if unit is not None:
                self._round_trip(figure, close, unit, fee_per_unit)
        for step in p.steps:
            step_filled = ZERO
            for close in step.fills:
                step_filled += dec(close.qty)
                ids.append(close.fill_id)
                if unit is not None:
                    self._round_trip(figure, close, unit, fee_per_unit)
            tp_filled += step_filled
            if step.status in COVERING:
                covered += dec(step.qty) - dec(step.cancelled)
            if step.order_id and step.order_id not in self.tp_ids:
                self.tp_ids.add(step.order_id)
                figure.orders += 1
                self.new_orders += 1
                status = step.status
                if status == StepStatus.LIVE and step_filled > 0:
                    status = "partially_filled"
                lines.append(
                    f"{step.order_id}\t{self.sid}\t{p.symbol}\t{self._index[p.symbol]}\tsell\tlimit\t"
                    f"{step.qty}\t{step.price}\t{status}\tt\t{p.id}\t{step.client_id}\t{step.tier}\t"
                    f"{step_filled}\t{self.ts(step.acked_at or step.claimed_at)}\n"
                )
        uncovered = filled - covered - closed  # Position.uncovered
        if uncovered > 0 and dec(p.dust) != uncovered:  # dust: recorded, not retried
            self.uncovered += 1
        if filled - closed - tp_filled > 0:  # Position.open_quantity
            self.open_positions += 1

    def _round_trip(
        self, figure: _Figures, close: CloseRow, unit: Decimal, fee_per_unit: Decimal
    ) -> None:
        price, qty, fee = self.dec(close.price), self.dec(close.qty), self.dec(close.fee)
        pnl = price * qty - fee - qty * unit
        figure.pnl += pnl
        figure.trade_fees += fee + qty * fee_per_unit
        figure.round_trips += 1
        if pnl > 0:
            figure.wins += 1
        figure.spread_sum += (price - unit) / unit
        self.sell_pnl[close.fill_id] = self.sell_pnl.get(close.fill_id, ZERO) + pnl

    def _tp_record(self, record: reader.TpRecord) -> str | None:
        f = record.fields
        symbol = f.get("symbol", "")
        try:
            quantity, price = Decimal(f["quantity"]), Decimal(f["price"])
            filled = Decimal(f.get("filled") or "0")
        except (KeyError, InvalidOperation):
            log.warning(
                "TP record %s of session %s is malformed; skipped", record.order_id, self.sid
            )
            return None
        if not symbol:
            return None
        self.tp_ids.add(record.order_id)
        self.figure(symbol).orders += 1
        self.new_orders += 1
        created = reader.iso_to_ms(f.get("created_at", "")) or self.header.ended_at or self.now
        return copy_line(
            (
                record.order_id,
                self.sid,
                symbol,
                str(self._index[symbol]),
                "sell",
                "limit",
                str(quantity),
                str(price),
                f.get("status") or "unknown",
                "t",
                f.get("position", ""),
                f.get("client_id", ""),
                f.get("tier", ""),
                str(filled),
                self.ts(created),
            )
        )

    # --- fills ----------------------------------------------------------------------------
    async def _fills(self) -> AsyncIterator[bytes]:
        """Every recorded fill once, in fill-id order (then any fill no position mentions)."""
        ids = _sorted_unique(self.fill_ids)
        self.fill_ids = []
        fetched = 0
        async for raws in reader.fills_by_id(self.redis, self.keys, self.sid, ids, FETCH):
            with _gc_paused(), localcontext(_EXACT):
                rows = [decode_fill_row(raw) for raw in raws if raw is not None]
                fetched += len(rows)
                chunk = self._fill_chunk(rows)
            if chunk:
                yield chunk
        if await self.redis.hlen(self.keys.fills(self.sid)) > fetched:  # sells that closed nothing
            known = set(ids)
            async for items in reader.scan_items(self.redis, self.keys.fills(self.sid), FETCH):
                with _gc_paused(), localcontext(_EXACT):
                    chunk = self._fill_chunk(
                        [decode_fill_row(raw) for fid, raw in items if fid not in known]
                    )
                if chunk:
                    yield chunk

    def _fill_chunk(self, rows: list[FillRow]) -> bytes:
        """COPY lines of the rows not seen before (the hot loop: one pass, locals only)."""
        if self.mode is Mode.STAGING:  # PostgreSQL de-duplicates; the totals come from the tables
            for f in rows:
                if f.symbol not in self.figures:
                    self.figure(f.symbol)
            return self._fill_lines(rows)
        kept: list[FillRow] = []
        if self.filter.exact is not None:  # a dry run
            exact = self.filter.exact
            for f in rows:
                key = (f.order_id, f.symbol, f.ts, f.price, f.quantity)
                if key not in exact:
                    exact.add(key)
                    kept.append(f)
            self._count_fills(kept)
        else:
            mask, bits, candidates = self.filter.mask, self.filter.bits, self.candidates
            for f in rows:
                h = hash((f.order_id, f.symbol, f.ts, f.price, f.quantity))
                i, j = h & mask, (h >> 32) & mask
                a, b = 1 << (i & 7), 1 << (j & 7)
                i >>= 3
                j >>= 3
                if bits[i] & a and bits[j] & b:
                    candidates.append(f)  # maybe seen: PostgreSQL decides (_settle_candidates)
                    continue
                bits[i] |= a
                bits[j] |= b
                kept.append(f)
            self._count_fills(kept)
            self.new_fills += len(kept)
        return self._fill_lines(kept)

    def _count_fills(self, rows: list[FillRow]) -> None:
        """Per-pair counts, volume and fees (quote), and the fills of non-TP orders."""
        figures, derived, tp_ids, dec = self.figures, self.derived, self.tp_ids, self.dec
        first = self.first_fill_ms
        for f in rows:
            price, qty = dec(f.price), dec(f.quantity)
            notional = price * qty
            figure = figures.get(f.symbol)
            if figure is None:
                figure = self.figure(f.symbol)
            figure.fills += 1
            figure.volume += notional
            fee = dec(f.fee)
            if f.fee_currency is not None and f.fee_currency == f.symbol.partition("/")[0]:
                fee *= price  # charged in the base asset: valued at the fill's price
            figure.fees += fee
            ts = f.ts
            if first is None or ts < first:
                first = ts
            oid = f.order_id
            if oid not in tp_ids:
                agg = derived.get(oid)
                if agg is None:
                    derived[oid] = _OrderFills(f, qty, notional)
                else:
                    agg.quantity += qty
                    agg.notional += notional
                    if ts < agg.first:
                        agg.first = ts
        self.first_fill_ms = first

    def _fill_lines(self, rows: list[FillRow]) -> bytes:
        sid, pnl_of = self.sid, self.sell_pnl.get
        seconds, prefix_of = self.ts.seconds, self.ts.prefix
        lines = []
        for f in rows:
            second, milli = divmod(f.ts, 1000)
            prefix = seconds.get(second) or prefix_of(second)
            pnl = pnl_of(f.fill_id) if f.side == "sell" else None
            lines.append(
                f"{f.fill_id}\t{sid}\t{f.order_id}\t{f.symbol}\t{f.side}\t{f.quantity}\t{f.price}\t"
                f"{f.fee}\t{f.fee_currency or ''}\t{prefix}.{milli:03d}+00\t"
                f"{'' if pnl is None else _money(pnl)}\t{f.order_type or ''}\n"
            )
        try:
            return _encode(lines, len(FILL_COLUMNS))
        except _NeedsEscaping:
            return "".join(copy_line(self._fill_fields(f)) for f in rows).encode()

    def _fill_fields(self, f: FillRow) -> tuple[str, ...]:
        pnl = self.sell_pnl.get(f.fill_id) if f.side == "sell" else None
        return (
            f.fill_id,
            self.sid,
            f.order_id,
            f.symbol,
            f.side,
            f.quantity,
            f.price,
            f.fee,
            f.fee_currency or "",
            self.ts(f.ts),
            "" if pnl is None else str(_money(pnl)),
            f.order_type or "",
        )

    async def _settle_candidates(self, sink: Sink) -> None:
        """Fast path: fills the filter flagged go through ON CONFLICT; count those stored."""
        rows, self.candidates = self.candidates, []

        async def source() -> AsyncIterator[bytes]:
            yield "".join(copy_line(self._fill_fields(f)) for f in rows).encode()

        stored = set(await sink.insert_fills(source()))
        self.new_fills += len(stored)
        with localcontext(_EXACT):
            self._count_fills([f for f in rows if f.fill_id in stored])

    # --- the trader's orders ----------------------------------------------------------------
    async def _trader_orders(self) -> AsyncIterator[bytes]:
        """The trader's `order` events, then (not on the staging path: SQL does it there) its
        orders known only from fills: quantity = filled = the sum of their fills, price =
        their volume-weighted average (18 decimals, half up), created at the first fill."""
        async for batch in reader.order_events(self.redis, self.keys, self.sid):
            lines = []
            for order in batch:
                if order.order_id in self.tp_ids or order.order_id in self.event_ids:
                    continue
                self.event_ids.add(order.order_id)
                self.figure(order.symbol).orders += 1
                agg = self.derived.get(order.order_id)
                lines.append(
                    copy_line(
                        (
                            order.order_id,
                            self.sid,
                            order.symbol,
                            str(self._index[order.symbol]),
                            order.side,
                            order.order_type,
                            str(order.quantity),
                            str(order.price),
                            order.status,
                            "f",
                            "",
                            "",
                            "",
                            str(agg.quantity) if agg is not None else "0",
                            self.ts(order.ts),
                        )
                    )
                )
            self.new_orders += len(lines)
            if lines:
                yield "".join(lines).encode()
        if self.mode is Mode.STAGING:
            return
        lines = []
        with localcontext(_EXACT):
            for oid in sorted(self.derived):  # in id order: the primary key is filled in order
                if oid in self.event_ids:
                    continue
                agg = self.derived[oid]
                self.figure(agg.symbol).orders += 1
                price = _plain(
                    (agg.notional / agg.quantity).quantize(PRICE, rounding=ROUND_HALF_UP)
                )
                lines.append(
                    copy_line(
                        (
                            oid,
                            self.sid,
                            agg.symbol,
                            str(self._index[agg.symbol]),
                            agg.side,
                            agg.kind,
                            str(agg.quantity),
                            price,
                            "filled",
                            "f",
                            "",
                            "",
                            "",
                            str(agg.quantity),
                            self.ts(agg.first),
                        )
                    )
                )
                if len(lines) >= FETCH * 10:
                    self.new_orders += len(lines)
                    yield "".join(lines).encode()
                    lines = []
        self.new_orders += len(lines)
        if lines:
            yield "".join(lines).encode()

    # --- rows -----------------------------------------------------------------------------
    def pair_rows(self) -> list[PairRow]:
        rows = []
        for symbol in self.pairs:
            f = self.figures[symbol]
            spread = _money(_EXACT.divide(f.spread_sum, f.round_trips)) if f.round_trips else None
            rows.append(
                PairRow(
                    symbol=symbol,
                    total_orders=f.orders,
                    total_fills=f.fills,
                    total_pnl=_money(f.pnl),
                    total_fees=_money(f.fees),
                    avg_spread=spread,
                    round_trips=f.round_trips,
                    wins=f.wins,
                    trade_fees=_money(f.trade_fees),
                )
            )
        return rows

    def session_row(self) -> SessionRow:
        pairs = self.pair_rows()
        started = (
            self.header.started_at if self.header.started_at is not None else self.first_fill_ms
        )
        fills = sum(p.total_fills for p in pairs)
        return SessionRow(
            id=self.sid,
            pairs=tuple(self.pairs),
            total_orders=sum(p.total_orders for p in pairs),
            total_fills=fills,
            total_pnl=sum((p.total_pnl for p in pairs), ZERO),
            total_fees=sum((p.total_fees for p in pairs), ZERO),
            total_volume=sum((_money(f.volume) for f in self.figures.values()), ZERO),
            uncovered_positions=self.uncovered,
            open_positions=self.open_positions,
            duplicate_fills=max(0, self.header.fills - fills),
            end_reason=self.header.end_reason,
            started_at=ms_to_datetime(started) if started is not None else None,
            ended_at=ms_to_datetime(self.header.ended_at)
            if self.header.ended_at is not None
            else None,
            migrated_at=ms_to_datetime(self.now),
        )

    def result(self, status: Status, duration_ms: int) -> MigrationResult:
        row = self.session_row()
        return MigrationResult(
            self.sid,
            status,
            fills=row.total_fills,
            orders=row.total_orders,
            pairs=len(row.pairs),
            pnl=row.total_pnl,
            fees=row.total_fees,
            duplicates=row.duplicate_fills,
            new_fills=self.new_fills,
            new_orders=self.new_orders,
            fast=self.fast,
            duration_ms=duration_ms,
        )


class _NeedsEscaping(Exception):
    """A chunk holds a tab, newline, CR or backslash inside a value: build it field by field."""


def _encode(lines: list[str], columns: int) -> bytes:
    """Join COPY lines built without escaping, after checking no value needed any."""
    text = "".join(lines)
    if (
        text.count("\t") != len(lines) * (columns - 1)
        or text.count("\n") != len(lines)
        or "\\" in text
        or "\r" in text
    ):
        raise _NeedsEscaping
    return text.encode()


def _sorted_unique(ids: list[str]) -> list[str]:
    ids.sort()
    out: list[str] = []
    last = None
    for fid in ids:
        if fid != last:
            out.append(fid)
            last = fid
    return out


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a batch is decoded: the objects are acyclic and short-lived,
    and collections triggered by their allocation would only traverse them in vain."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _plain(value: Decimal) -> str:
    """Decimal text without exponent or trailing zeros (matches SQL trim_scale)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _money(value: Decimal) -> Decimal:
    return value.quantize(MONEY, rounding=ROUND_HALF_EVEN, context=_EXACT)


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
