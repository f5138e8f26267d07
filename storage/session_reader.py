"""Reading one session's state out of Redis (docs/architecture.md), streamed in chunks.

The migrator never loads a session whole: hashes are walked with HSCAN and decoded a
chunk at a time, so memory stays flat whatever the session's size. HSCAN and SSCAN may
return an element twice (the table can be rehashed while it is walked, e.g. shrunk by
deletions): every scan here returns each field once (`Once`), so a re-visited position
or TP order is never counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from events.schema import Fill, Order
from storage.keys import Keys
from storage.ledger import decode_fill
from storage.redis import AnyRedis, as_text

SCAN_COUNT = 1000  # HSCAN COUNT: entries per round trip (a hint; Redis may return more)

_order_decoder = msgspec.json.Decoder(Order)
decode_order = _order_decoder.decode  # a stored `order` event (orders:{sid})


class FillRow(msgspec.Struct, gc=False):
    """A recorded fill (storage.ledger.encode_fill) with its numbers kept as stored decimal text.

    The migrator copies the text verbatim into NUMERIC columns (exact, no float) and
    parses Decimal only where it computes; decoding a million fills this way is ~2x
    cheaper than building three Decimals each. Fields mirror events.schema.Fill.
    """

    fill_id: str
    order_id: str
    symbol: str
    side: str
    price: str
    quantity: str
    fee: str
    ts: int
    fee_currency: str | None = None
    order_type: str | None = None
    entry: str = ""  # stream id of the fill's event ("" for fills recorded before it was kept)


decode_fill_row = msgspec.json.Decoder(FillRow).decode


class BuyRow(msgspec.Struct, array_like=True, gc=False, frozen=True):
    fill_id: str
    price: str
    qty: str
    fee: str  # in quote
    ts: int


class CloseRow(msgspec.Struct, array_like=True, gc=False, frozen=True):
    fill_id: str
    qty: str
    price: str
    fee: str  # in quote
    ts: int


class StepRow(msgspec.Struct, kw_only=True, gc=False, frozen=True):
    n: int
    client_id: str
    qty: str
    price: str
    tier: int
    status: str
    claimed_at: int
    order_id: str = ""
    cancelled: str = "0"
    fills: tuple[CloseRow, ...] = ()
    acked_at: int = 0


class PositionRow(msgspec.Struct, kw_only=True, gc=False, frozen=True):
    """A stored position (trading.positions.encode_position), the fields the migrator reads,
    numbers as their decimal text: the same JSON, decoded about twice as fast as Position
    (a Decimal is built only where a figure needs it). tests/test_migrator.py checks that
    it reads what Position reads."""

    id: str
    symbol: str
    opened_at: int = 0
    buys: tuple[BuyRow, ...] = ()
    closes: tuple[CloseRow, ...] = ()  # sells on other orders, allocated FIFO
    steps: tuple[StepRow, ...] = ()
    dust: str = "0"


decode_position_row = msgspec.json.Decoder(PositionRow).decode


@dataclass(frozen=True, slots=True)
class SessionHeader:
    """What Redis holds about a session, without reading its fills."""

    session_id: str
    exists: bool  # the session:{sid} hash exists
    started_at: int | None  # epoch ms of session_started
    ended_at: int | None  # epoch ms of session_ended
    end_id: str | None  # stream id of the session_ended entry
    fills_expected: int | None  # the trader's own count, from session_ended
    end_reason: str | None
    listed_pairs: tuple[str, ...]  # from session_started, in the trader's order
    seen_pairs: frozenset[str]  # pairs:{sid}: every symbol of its fills and orders
    fills: int  # HLEN fills:{sid}
    positions: int
    order_events: int
    tp_orders: int
    completed_at: str | None  # migration:completed:{sid}

    @property
    def has_state(self) -> bool:
        """False when the session's Redis state is gone (no hash, no fills, no positions)."""
        return self.exists or self.fills > 0 or self.positions > 0

    @property
    def pairs(self) -> tuple[str, ...]:
        """The session's pairs: the listed ones first, then any others seen, sorted."""
        listed = set(self.listed_pairs)
        return self.listed_pairs + tuple(sorted(p for p in self.seen_pairs if p not in listed))


async def read_header(redis: AnyRedis, keys: Keys, sid: str) -> SessionHeader:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.session(sid))
        pipe.smembers(keys.pairs(sid))
        pipe.hlen(keys.fills(sid))
        pipe.hlen(keys.positions(sid))
        pipe.hlen(keys.orders(sid))
        pipe.scard(keys.tp_orders(sid))
        pipe.get(keys.migration_completed(sid))
        raw, pairs, fills, positions, orders, tps, completed = await pipe.execute()
    fields = {as_text(k): as_text(v) for k, v in raw.items()}
    listed = tuple(p for p in fields.get("pairs", "").split(",") if p)
    return SessionHeader(
        session_id=sid,
        exists=bool(fields),
        started_at=_int(fields.get("started_at")),
        ended_at=_int(fields.get("ended_at")),
        end_id=fields.get("end_id") or None,
        fills_expected=_int(fields.get("fills_expected")),
        end_reason=fields.get("end_reason") or None,
        listed_pairs=listed,
        seen_pairs=frozenset(as_text(p) for p in pairs),
        fills=int(fills),
        positions=int(positions),
        order_events=int(orders),
        tp_orders=int(tps),
        completed_at=as_text(completed) if completed else None,
    )


class Once:
    """The elements a scan has returned so far: SCAN-family commands guarantee every
    element that stays in the table is returned at least once, not at most once."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: set[bytes | str] = set()

    def first(self, element: bytes | str) -> bool:
        """True the first time `element` is met."""
        if element in self.seen:
            return False
        self.seen.add(element)
        return True


async def scan_items_raw(
    redis: AnyRedis, key: str, count: int = SCAN_COUNT
) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    """The hash's (field, value) pairs, a chunk per HSCAN round trip, each field once."""
    once = Once()
    cursor = 0
    while True:
        cursor, chunk = await redis.hscan(key, cursor, count=count)
        if chunk:
            assert isinstance(chunk, dict)
            fresh = [
                (k, v)
                for k, v in chunk.items()
                if isinstance(k, bytes) and isinstance(v, bytes) and once.first(k)
            ]
            if fresh:
                yield fresh
        if cursor == 0:
            return


async def scan_values(
    redis: AnyRedis, key: str, count: int = SCAN_COUNT
) -> AsyncIterator[list[bytes]]:
    """The hash's values, a chunk per HSCAN round trip, each field's once."""
    async for items in scan_items_raw(redis, key, count):
        yield [v for _, v in items]


async def scan_items(
    redis: AnyRedis, key: str, count: int = SCAN_COUNT
) -> AsyncIterator[list[tuple[str, bytes]]]:
    """The hash's (field, value) pairs, a chunk per HSCAN round trip, each field once."""
    async for items in scan_items_raw(redis, key, count):
        yield [(as_text(k), v) for k, v in items]


async def scan_members(
    redis: AnyRedis, key: str, count: int = SCAN_COUNT
) -> AsyncIterator[list[str]]:
    """The set's members, a chunk per SSCAN round trip, each once."""
    once = Once()
    cursor = 0
    while True:
        cursor, members = await redis.sscan(key, cursor, count=count)
        fresh = [m for m in map(as_text, members) if once.first(m)]
        if fresh:
            yield fresh
        if cursor == 0:
            return


async def fills(
    redis: AnyRedis, keys: Keys, sid: str, count: int = SCAN_COUNT
) -> AsyncIterator[list[Fill]]:
    async for chunk in scan_values(redis, keys.fills(sid), count):
        yield [decode_fill(raw) for raw in chunk]


async def fills_by_id(
    redis: AnyRedis, keys: Keys, sid: str, ids: Sequence[str], count: int = SCAN_COUNT
) -> AsyncIterator[list[bytes | None]]:
    """The recorded fills with these ids, in this order (None: no such fill), per HMGET.

    The next HMGET is already on its way while the caller works on a chunk.
    """
    key = keys.fills(sid)
    ahead: asyncio.Future[list[bytes | str | None]] | None = None
    try:
        for start in range(0, len(ids), count):
            request = asyncio.ensure_future(redis.hmget(key, ids[start : start + count]))
            if ahead is not None:
                yield [v if isinstance(v, bytes) else None for v in await ahead]
            ahead = request
        if ahead is not None:
            values, ahead = await ahead, None
            yield [v if isinstance(v, bytes) else None for v in values]
    finally:
        if ahead is not None and not ahead.done():
            ahead.cancel()
            with contextlib.suppress(BaseException):
                await ahead


async def order_events(
    redis: AnyRedis, keys: Keys, sid: str, count: int = SCAN_COUNT
) -> AsyncIterator[list[Order]]:
    """The trader's `order` events (the latest one per order id)."""
    async for chunk in scan_values(redis, keys.orders(sid), count):
        yield [_order_decoder.decode(raw) for raw in chunk]


@dataclass(frozen=True, slots=True)
class TpRecord:
    """A `tp_order:{sid}:<id>` hash (the engine's record of one TP order)."""

    order_id: str
    fields: dict[str, str]


async def tp_records(
    redis: AnyRedis, keys: Keys, sid: str, skip: set[str], count: int = SCAN_COUNT
) -> list[TpRecord]:
    """The TP records of the session whose order id is not in `skip` (normally none)."""
    wanted: list[str] = []
    async for members in scan_members(redis, keys.tp_orders(sid), count):
        wanted += [oid for oid in members if oid not in skip]
    wanted.sort()
    out: list[TpRecord] = []
    for start in range(0, len(wanted), count):
        ids = wanted[start : start + count]
        async with redis.pipeline(transaction=False) as pipe:
            for oid in ids:
                pipe.hgetall(keys.tp_order(sid, oid))
            replies = await pipe.execute()
        out += [
            TpRecord(oid, {as_text(k): as_text(v) for k, v in reply.items()})
            for oid, reply in zip(ids, replies, strict=True)
            if reply
        ]
    return out


async def ended_sessions(redis: AnyRedis, keys: Keys, since_ms: int) -> list[tuple[str, int]]:
    """(sid, ended_at ms) of sessions that ended at or after `since_ms`, oldest first.

    Sources: `mm:sessions:ended` (ended, not migrated yet) and the sessions active since
    then (`mm:sessions`) whose session hash records an end (migrated ones included).
    """
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(keys.sessions_ended, since_ms, "+inf", withscores=True)
        pipe.zrangebyscore(keys.sessions, since_ms, "+inf")
        pending, active = await pipe.execute()
    found = {as_text(sid): int(score) for sid, score in pending}
    candidates = sorted({as_text(s) for s in active} - set(found))
    for start in range(0, len(candidates), SCAN_COUNT):
        batch = candidates[start : start + SCAN_COUNT]
        async with redis.pipeline(transaction=False) as pipe:
            for sid in batch:
                pipe.hget(keys.session(sid), "ended_at")
            ends = await pipe.execute()
        for sid, end in zip(batch, ends, strict=True):
            ended = _int(as_text(end)) if end else None
            if ended is not None and ended >= since_ms:
                found[sid] = ended
    return sorted(found.items(), key=lambda item: (item[1], item[0]))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a batch is decoded: the rows are acyclic and short-lived,
    and collections triggered by their allocation would only traverse them in vain."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def ms_to_datetime(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime (exact to the millisecond)."""
    seconds, millis = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=millis * 1000)


def iso_to_ms(text: str) -> int | None:
    """An ISO-8601 time (the engine's `created_at`) as epoch ms, or None if unparseable."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return None
