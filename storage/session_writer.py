"""The bulk PostgreSQL write path of a session: COPY, one transaction, no row-by-row inserts.

A session is written in ONE transaction, under an advisory lock on its id (two
migrators of one session queue up). Two paths:

* **fast** — the session was never written (no `migrated_at`, no fill or order rows):
  nothing can conflict, so the caller de-duplicates in memory and the rows are
  COPYed straight into `fills` and `orders`.
* **staging** — re-runs: rows are COPYed into temporary tables, then
  `INSERT … SELECT … ON CONFLICT` keeps what is stored and adds only what is new.
  An id already used by *another* session is stored as `<session>:<id>` so that no
  fill is dropped by a clash of trader ids across sessions.

Rows travel as COPY text lines (`copy_line`), exact decimal text for NUMERIC
columns: no float ever touches a number on its way in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg

from storage.session_totals import FEE_IN_QUOTE

FILL_COLUMNS = (
    "id",
    "session_id",
    "order_id",
    "symbol",
    "side",
    "quantity",
    "price",
    "fee",
    "fee_currency",
    "timestamp",
    "realized_pnl",
    "order_type",
)
ORDER_COLUMNS = (
    "id",
    "session_id",
    "symbol",
    "pair_index",
    "side",
    "type",
    "quantity",
    "price",
    "status",
    "is_take_profit",
    "position_id",
    "client_order_id",
    "tier",
    "filled_quantity",
    "created_at",
    "status_at",  # time of the `order` event that set the status (NULL: ours, or from fills)
    "status_rank",  # storage.orders.status_rank: an update never moves a status backwards
)
POSITION_COLUMNS = (
    "session_id",
    "id",
    "symbol",
    "opened_at",
    "quantity",
    "open_quantity",
    "on_book",
    "uncovered",
    "realized_pnl",
    "round_trips",
    "wins",
    "spread_sum",
    "trade_fees",
)
WORK_MEM = "256MB"
NULL = ""  # COPY ... NULL '': an empty field is NULL (no NOT NULL text column is ever empty)

_STAGE = {"fills": "mm_stage_fills", "orders": "mm_stage_orders", "positions": "mm_stage_positions"}
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def copy_line(fields: Sequence[str]) -> str:
    """One COPY text-format line (with its newline); special characters are escaped."""
    line = "\t".join(fields)
    if line.count("\t") != len(fields) - 1 or "\\" in line or "\n" in line or "\r" in line:
        line = "\t".join(f.translate(_ESCAPES) for f in fields)
    return line + "\n"


class NeedsEscaping(Exception):
    """A chunk holds a tab, newline, CR or backslash inside a value: build it with copy_line."""


def join_unescaped(lines: list[str], columns: int) -> bytes:
    """COPY lines built by plain f-strings (the hot loops), joined once it is checked that no
    value needed escaping; else NeedsEscaping."""
    text = "".join(lines)
    if (
        text.count("\t") != len(lines) * (columns - 1)
        or text.count("\n") != len(lines)
        or "\\" in text
        or "\r" in text
    ):
        raise NeedsEscaping
    return text.encode()


class TimestampText:
    """Epoch ms -> `YYYY-MM-DD HH:MM:SS.mmm+00` (COPY text for TIMESTAMPTZ), cached per second."""

    def __init__(self, limit: int = 100_000) -> None:
        self.seconds: dict[int, str] = {}  # epoch second -> its text (hot loops read it directly)
        self._limit = limit

    def __call__(self, ms: int) -> str:
        second, millis = divmod(ms, 1000)
        return f"{self.seconds.get(second) or self.prefix(second)}.{millis:03d}+00"

    def prefix(self, second: int) -> str:
        """`YYYY-MM-DD HH:MM:SS` of an epoch second, remembered."""
        if len(self.seconds) >= self._limit:
            self.seconds.clear()
        text = self.seconds[second] = (_EPOCH + dt.timedelta(seconds=second)).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        return text


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: str
    pairs: tuple[str, ...]
    total_orders: int
    total_fills: int
    total_pnl: Decimal
    total_fees: Decimal
    total_volume: Decimal
    uncovered_positions: int
    open_positions: int
    duplicate_fills: int
    end_reason: str | None
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    migrated_at: dt.datetime
    fills_expected: int | None = None  # the `fills` of session_ended
    sync_cursor: str = "0-0"  # the last changes:{sid} entry included
    closed: bool = False  # no open position, no TP on the book: closed_at is set (kept if set)


@dataclass(frozen=True, slots=True)
class PairRow:
    symbol: str
    total_orders: int
    total_fills: int
    total_pnl: Decimal
    total_fees: Decimal
    avg_spread: Decimal | None
    round_trips: int
    wins: int
    trade_fees: Decimal  # fees inside total_pnl: sells' fees + the sold quantity's buy fees
    total_volume: Decimal = Decimal(0)
    open_positions: int = 0
    uncovered_positions: int = 0


@dataclass(slots=True)
class PairTotals:
    """Per-pair counts and sums of what the tables hold for a session."""

    fills: dict[str, int] = field(default_factory=dict)
    fees: dict[str, Decimal] = field(default_factory=dict)
    volume: dict[str, Decimal] = field(default_factory=dict)
    orders: dict[str, int] = field(default_factory=dict)
    first_fill: dt.datetime | None = None


class SessionWriter:
    """Writes one session in one transaction on `conn`; use `async with SessionWriter(...)`."""

    def __init__(self, conn: asyncpg.Connection, session_id: str, *, staging: bool = False) -> None:
        self.conn = conn
        self.session_id = session_id
        self.force_staging = staging
        self.fast = False
        self.first = False  # the session was never migrated: this transaction is its first
        self._tx: asyncpg.transaction.Transaction | None = None
        self._staged: set[str] = set()

    async def __aenter__(self) -> SessionWriter:
        self._tx = self.conn.transaction()
        await self._tx.start()
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('mmops.migrate'), hashtext($1))", self.session_id
        )
        # the aggregates over the session's fills sort/hash up to a million rows: in memory,
        # not in temporary files (this transaction only)
        await self.conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
        row = await self.conn.fetchrow(
            """SELECT NOT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND migrated_at IS NOT NULL)
                      AS first,
                  NOT EXISTS (SELECT 1 FROM fills WHERE session_id = $1)
                  AND NOT EXISTS (SELECT 1 FROM orders WHERE session_id = $1) AS empty""",
            self.session_id,
        )
        assert row is not None
        self.first = bool(row["first"])
        self.fast = self.first and bool(row["empty"]) and not self.force_staging
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._tx is not None
        if exc_type is None:
            await self._tx.commit()
            return
        # a lost connection took the transaction with it: keep the original error
        with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError):
            await self._tx.rollback()

    async def copy(self, table: str, columns: Sequence[str], source: AsyncIterable[bytes]) -> None:
        """COPY text lines into `table` (fast path) or into its staging table."""
        target = table
        if not self.fast:
            await self._stage(table)
            target = _STAGE[table]
        await self.conn.copy_to_table(
            target, source=source, columns=list(columns), format="text", null=NULL
        )

    async def insert_fills(self, source: AsyncIterable[bytes]) -> list[str]:
        """Add these fill rows unless their id or content is stored; the ids that were added.

        The fast path sends here the few fills its in-memory filter could not clear.
        """
        await self._stage("fills")
        await self.conn.execute(f"TRUNCATE {_STAGE['fills']}")
        await self.conn.copy_to_table(
            _STAGE["fills"], source=source, columns=list(FILL_COLUMNS), format="text", null=NULL
        )
        rows = await self.conn.fetch(f"{_MERGE_FILLS} RETURNING id")
        prefix = self.session_id + ":"
        return [row["id"].removeprefix(prefix) for row in rows]

    async def merge_fills(self) -> int:
        """Staging path: add the staged fills that are new; how many were added."""
        if self.fast or _STAGE["fills"] not in self._staged:
            return 0
        return _count(await self.conn.execute(_MERGE_FILLS))

    async def derive_orders(
        self,
        pairs: Sequence[str],
        skip: Sequence[str],
        events: Sequence[str],
        only: Sequence[str] | None = None,
    ) -> int:
        """The trader's orders as the stored fills tell them (`skip`: our TP order ids;
        `events`: the orders written from `order` events, which get their filled quantity;
        `only`: just these order ids, the sync's touched ones).

        An order known only from fills: quantity = filled = the sum of its fills, price = their
        volume-weighted average (18 decimals, half up), created at its first fill. Fast path:
        straight into `orders` (returns how many); staging path: into the staging table.
        """
        target = "orders"
        if not self.fast:
            await self._stage("orders")
            target = _STAGE["orders"]
        status = await self.conn.execute(
            f"""WITH agg AS (
                    SELECT order_id, min(symbol) AS symbol, min(side) AS side,
                           coalesce(min(order_type), 'unknown') AS type, sum(quantity) AS quantity,
                           trim_scale(round(
                               sum(price * quantity)::numeric(1000, 60) / sum(quantity), 18
                           )) AS price,
                           min(timestamp) AS first
                    FROM fills WHERE session_id = $1 AND order_id <> ALL($3::text[])
                      AND ($5::text[] IS NULL OR order_id = ANY($5::text[]))
                    GROUP BY order_id),
                events AS (
                    UPDATE {target} o SET filled_quantity = agg.quantity FROM agg
                    WHERE o.id = ANY($4::text[]) AND o.session_id = $1 AND o.id = agg.order_id)
                INSERT INTO {target} (id, session_id, symbol, pair_index, side, type, quantity,
                                      price, status, is_take_profit, filled_quantity, created_at,
                                      status_rank)
                SELECT order_id, $1, symbol, array_position($2::text[], symbol) - 1, side, type,
                       quantity, price, 'filled', false, quantity, first, 2
                FROM agg WHERE order_id <> ALL($4::text[])""",
            self.session_id,
            list(pairs),
            list(skip),
            list(events),
            None if only is None else list(only),
        )
        return _count(status) if self.fast else 0

    async def merge_orders(self) -> int:
        """Staging path: add new orders, update the state of known ones; how many changed.

        A stored order's quantity, price and status change only if the staged status is not
        older (_NOT_OLDER): an older `order` event never overwrites a newer status; its
        filled quantity (from the fills) always follows."""
        if self.fast or _STAGE["orders"] not in self._staged:
            return 0
        cols = ", ".join(ORDER_COLUMNS[1:])
        guarded = ", ".join(
            f"{c} = CASE WHEN {_NOT_OLDER} THEN EXCLUDED.{c} ELSE o.{c} END"
            for c in ("quantity", "price", "status", "status_at", "status_rank")
        )
        return _count(
            await self.conn.execute(
                f"""INSERT INTO orders AS o ({", ".join(ORDER_COLUMNS)})
                SELECT {_qualified_id("orders")}, {cols} FROM {_STAGE["orders"]} s
                ON CONFLICT ON CONSTRAINT orders_pkey DO UPDATE SET {guarded},
                    filled_quantity = EXCLUDED.filled_quantity
                WHERE o.session_id = EXCLUDED.session_id
                  AND (o.quantity, o.price, o.status, o.status_at, o.filled_quantity)
                      IS DISTINCT FROM
                      (EXCLUDED.quantity, EXCLUDED.price, EXCLUDED.status, EXCLUDED.status_at,
                       EXCLUDED.filled_quantity)
                  AND ({_NOT_OLDER}
                       OR o.filled_quantity IS DISTINCT FROM EXCLUDED.filled_quantity)"""
            )
        )

    async def merge_positions(self) -> int:
        """Staging path: the staged positions' figures replace the stored ones; how many changed."""
        if self.fast or _STAGE["positions"] not in self._staged:
            return 0
        cols = ", ".join(POSITION_COLUMNS)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in POSITION_COLUMNS[2:])
        return _count(
            await self.conn.execute(
                f"""INSERT INTO positions AS p ({cols}) SELECT {cols} FROM {_STAGE["positions"]}
                ON CONFLICT ON CONSTRAINT positions_pkey DO UPDATE SET {updates}
                WHERE ({", ".join("p." + c for c in POSITION_COLUMNS[2:])}) IS DISTINCT FROM
                      ({", ".join("EXCLUDED." + c for c in POSITION_COLUMNS[2:])})"""
            )
        )

    async def _stage(self, table: str) -> None:
        target = _STAGE[table]
        if target not in self._staged:
            await self.conn.execute(
                f"CREATE TEMP TABLE {target} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            self._staged.add(target)

    async def totals(self) -> PairTotals:
        """What the tables hold for the session, per pair (fees in quote: see docs/queries.sql)."""
        out = PairTotals()
        for row in await self.conn.fetch(
            f"""SELECT symbol, count(*)::int AS n, sum({FEE_IN_QUOTE}) AS fees,
                      sum(price * quantity) AS volume
               FROM fills WHERE session_id = $1 GROUP BY symbol""",
            self.session_id,
        ):
            out.fills[row["symbol"]] = row["n"]
            out.fees[row["symbol"]] = row["fees"]
            out.volume[row["symbol"]] = row["volume"]
        for row in await self.conn.fetch(
            "SELECT symbol, count(*)::int AS n FROM orders WHERE session_id = $1 GROUP BY symbol",
            self.session_id,
        ):
            out.orders[row["symbol"]] = row["n"]
        out.first_fill = await self.conn.fetchval(
            "SELECT min(timestamp) FROM fills WHERE session_id = $1", self.session_id
        )
        return out

    async def finish(self, session: SessionRow, pairs: Sequence[PairRow]) -> None:
        """Upsert the session's row and its per-pair rows (totals recomputed, first migrated_at
        and closed_at kept; the sync cursor never moves back)."""
        await self.conn.execute(
            """INSERT INTO sessions (id, pairs, pair_count, total_orders, total_fills, total_pnl,
                   total_fees, total_volume, uncovered_positions, open_positions, duplicate_fills,
                   end_reason, started_at, ended_at, migrated_at, fills_expected, sync_cursor,
                   synced_at, closed_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                       $15, CASE WHEN $18::boolean THEN $15::timestamptz END)
               ON CONFLICT (id) DO UPDATE SET pairs = EXCLUDED.pairs,
                   pair_count = EXCLUDED.pair_count,
                   total_orders = EXCLUDED.total_orders, total_fills = EXCLUDED.total_fills,
                   total_pnl = EXCLUDED.total_pnl, total_fees = EXCLUDED.total_fees,
                   total_volume = EXCLUDED.total_volume,
                   uncovered_positions = EXCLUDED.uncovered_positions,
                   open_positions = EXCLUDED.open_positions,
                   duplicate_fills = EXCLUDED.duplicate_fills,
                   end_reason = EXCLUDED.end_reason,
                   started_at = coalesce(EXCLUDED.started_at, sessions.started_at),
                   ended_at = EXCLUDED.ended_at,
                   migrated_at = coalesce(sessions.migrated_at, EXCLUDED.migrated_at),
                   fills_expected = EXCLUDED.fills_expected,
                   sync_cursor = EXCLUDED.sync_cursor, synced_at = EXCLUDED.synced_at,
                   closed_at = CASE WHEN $18::boolean
                       THEN coalesce(sessions.closed_at, EXCLUDED.migrated_at) END""",
            session.id,
            list(session.pairs),
            len(session.pairs),
            session.total_orders,
            session.total_fills,
            session.total_pnl,
            session.total_fees,
            session.total_volume,
            session.uncovered_positions,
            session.open_positions,
            session.duplicate_fills,
            session.end_reason,
            session.started_at,
            session.ended_at,
            session.migrated_at,
            session.fills_expected,
            session.sync_cursor,
            session.closed,
        )
        await write_pairs(self.conn, session.id, pairs)


async def write_pairs(conn: asyncpg.Connection, session_id: str, pairs: Sequence[PairRow]) -> None:
    """Upsert per-pair rows of a session."""
    if not pairs:
        return
    await conn.execute(
        """INSERT INTO session_pairs (session_id, symbol, total_orders, total_fills, total_pnl,
               total_fees, avg_spread, round_trips, wins, trade_fees, total_volume,
               open_positions, uncovered_positions)
           SELECT $1, * FROM unnest($2::text[], $3::int[], $4::int[], $5::numeric[],
                                    $6::numeric[], $7::numeric[], $8::int[], $9::int[],
                                    $10::numeric[], $11::numeric[], $12::int[], $13::int[])
           ON CONFLICT (session_id, symbol) DO UPDATE SET
               total_orders = EXCLUDED.total_orders, total_fills = EXCLUDED.total_fills,
               total_pnl = EXCLUDED.total_pnl, total_fees = EXCLUDED.total_fees,
               avg_spread = EXCLUDED.avg_spread, round_trips = EXCLUDED.round_trips,
               wins = EXCLUDED.wins, trade_fees = EXCLUDED.trade_fees,
               total_volume = EXCLUDED.total_volume, open_positions = EXCLUDED.open_positions,
               uncovered_positions = EXCLUDED.uncovered_positions""",
        session_id,
        [p.symbol for p in pairs],
        [p.total_orders for p in pairs],
        [p.total_fills for p in pairs],
        [p.total_pnl for p in pairs],
        [p.total_fees for p in pairs],
        [p.avg_spread for p in pairs],
        [p.round_trips for p in pairs],
        [p.wins for p in pairs],
        [p.trade_fees for p in pairs],
        [p.total_volume for p in pairs],
        [p.open_positions for p in pairs],
        [p.uncovered_positions for p in pairs],
    )


async def upsert_started(
    conn: asyncpg.Connection | asyncpg.Pool,
    session_id: str,
    pairs: Sequence[str],
    started_at: dt.datetime,
) -> None:
    """A live session's row (ended_at NULL) from session_started; a migrated row is left alone."""
    await conn.execute(
        """INSERT INTO sessions (id, pairs, pair_count, started_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (id) DO UPDATE SET pairs = EXCLUDED.pairs, pair_count = EXCLUDED.pair_count,
               started_at = EXCLUDED.started_at
           WHERE sessions.migrated_at IS NULL""",
        session_id,
        list(pairs),
        len(pairs),
        started_at,
    )


def _qualified_id(table: str) -> str:
    """The staged row's id, or `<session>:<id>` when another session already uses the id."""
    return (
        f"CASE WHEN EXISTS (SELECT 1 FROM {table} x WHERE x.id = s.id AND x.session_id <> "
        "s.session_id) THEN s.session_id || ':' || s.id ELSE s.id END"
    )


# the staged order's status is not older than the stored one: a later `order` event, or the
# same time and a status further along; without event times (our TPs), further along or equal
_NOT_OLDER = (
    "(coalesce(EXCLUDED.status_at, o.status_at, '-infinity'::timestamptz), EXCLUDED.status_rank)"
    " >= (coalesce(o.status_at, EXCLUDED.status_at, '-infinity'::timestamptz), o.status_rank)"
)

_MERGE_FILLS = (
    f"INSERT INTO fills ({', '.join(FILL_COLUMNS)}) SELECT {_qualified_id('fills')}, "
    f"{', '.join(FILL_COLUMNS[1:])} FROM {_STAGE['fills']} s ON CONFLICT DO NOTHING"
)


def _count(status: str) -> int:
    """Rows affected, from a command status such as 'INSERT 0 42'."""
    return int(status.rsplit(" ", 1)[-1])
