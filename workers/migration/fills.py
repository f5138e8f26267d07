"""The fills pass: every recorded fill once, as COPY lines, counted into the per-pair figures.

Fills are fetched by HMGET in id order (so the indexes are filled in order), then any
fill no position mentions is found by HSCAN. A fill recorded twice under different ids
is stored once: the fills' UNIQUE content key is checked in memory (ContentFilter) on
the fast path and in a dry run; on the staging path PostgreSQL does it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import localcontext

from storage import session_reader as reader
from storage.keys import Keys
from storage.redis import AnyRedis, stream_id
from storage.session_reader import FillRow, decode_fill_row, gc_paused
from storage.session_writer import FILL_COLUMNS, NeedsEscaping, copy_line, join_unescaped
from trading.fees import charged_in_base, fee_in_quote
from workers.migration.figures import EXACT, OrderFills, money
from workers.migration.sink import Mode, Sink
from workers.migration.tally import SessionTally

FETCH = 2000  # fills per HMGET / HSCAN round trip


class ContentFilter:
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


class FillsPass:
    """Streams the fill lines (`lines`), then settles the fills the filter flagged (`settle`)."""

    def __init__(self, redis: AnyRedis, keys: Keys, tally: SessionTally, mode: Mode) -> None:
        self.redis = redis
        self.keys = keys
        self.tally = tally
        self.mode = mode
        self.filter = ContentFilter(tally.header.fills, exact=mode is Mode.DRY)
        self.candidates: list[FillRow] = []  # fast path: maybe duplicates
        self._end: tuple[int, int] | None = None  # with count_before: the end's stream id
        self._end_ts = 0
        self._logged: set[str] = set()

    def count_before(self, end_id: str, end_ts: int, logged: set[str]) -> None:
        """Count into tally.fills_before_end the fills before the session's end: those whose
        event precedes the session_ended entry `end_id` (by the entry id stored with the
        fill; a fill stored without one, unless the changes stream logged it as recorded
        after the end), and those whose own time is not after the end's `end_ts` (a fill the
        trader counted that reached the stream late)."""
        self._end = stream_id(end_id)
        self._end_ts = end_ts
        self._logged = logged

    async def lines(self) -> AsyncIterator[bytes]:
        """Every recorded fill once, in fill-id order (then any fill no position mentions)."""
        t = self.tally
        ids = _sorted_unique(t.fill_ids)
        t.fill_ids = []
        fetched = 0
        async for raws in reader.fills_by_id(self.redis, self.keys, t.sid, ids, FETCH):
            with gc_paused(), localcontext(EXACT):
                rows = [decode_fill_row(raw) for raw in raws if raw is not None]
                fetched += len(rows)
                chunk = self.chunk(rows)
            if chunk:
                yield chunk
        if await self.redis.hlen(self.keys.fills(t.sid)) > fetched:  # sells that closed nothing
            known = set(ids)
            async for items in reader.scan_items(self.redis, self.keys.fills(t.sid), FETCH):
                with gc_paused(), localcontext(EXACT):
                    chunk = self.chunk(
                        [decode_fill_row(raw) for fid, raw in items if fid not in known]
                    )
                if chunk:
                    yield chunk

    async def settle(self, sink: Sink) -> None:
        """Fast path: fills the filter flagged go through ON CONFLICT; count those stored."""
        if not self.candidates:
            return
        rows, self.candidates = self.candidates, []

        async def source() -> AsyncIterator[bytes]:
            yield "".join(copy_line(self._fields(f)) for f in rows).encode()

        stored = set(await sink.insert_fills(source()))
        self.tally.new_fills += len(stored)
        with localcontext(EXACT):
            self._count([f for f in rows if f.fill_id in stored])

    def chunk(self, rows: list[FillRow]) -> bytes:
        """COPY lines of the rows not seen before (the hot loop: one pass, locals only)."""
        if self._end is not None:
            self._count_before(rows)
        if self.mode is Mode.STAGING:  # PostgreSQL de-duplicates; the totals come from the tables
            for f in rows:
                if f.symbol not in self.tally.figures:
                    self.tally.figure(f.symbol)
            return self._lines(rows)
        kept: list[FillRow] = []
        if self.filter.exact is not None:  # a dry run
            exact = self.filter.exact
            for f in rows:
                key = (f.order_id, f.symbol, f.ts, f.price, f.quantity)
                if key not in exact:
                    exact.add(key)
                    kept.append(f)
            self._count(kept)
        else:
            mask, bits, candidates = self.filter.mask, self.filter.bits, self.candidates
            for f in rows:
                h = hash((f.order_id, f.symbol, f.ts, f.price, f.quantity))
                i, j = h & mask, (h >> 32) & mask
                a, b = 1 << (i & 7), 1 << (j & 7)
                i >>= 3
                j >>= 3
                if bits[i] & a and bits[j] & b:
                    candidates.append(f)  # maybe seen: PostgreSQL decides (settle)
                    continue
                bits[i] |= a
                bits[j] |= b
                kept.append(f)
            self._count(kept)
            self.tally.new_fills += len(kept)
        return self._lines(kept)

    def _count_before(self, rows: list[FillRow]) -> None:
        end, end_ts, logged = self._end, self._end_ts, self._logged
        assert end is not None
        n = 0
        for f in rows:
            if f.ts <= end_ts:
                n += 1
            elif f.entry:
                n += stream_id(f.entry) < end
            else:
                n += f.fill_id not in logged
        self.tally.fills_before_end += n

    def _count(self, rows: list[FillRow]) -> None:
        """Per-pair counts, volume and fees (quote), and the fills of non-TP orders."""
        t = self.tally
        figures, derived, tp_ids, dec = t.figures, t.derived, t.tp_ids, t.dec
        first = t.first_fill_ms
        for f in rows:
            price, qty = dec[f.price], dec[f.quantity]
            notional = price * qty
            figure = figures.get(f.symbol)
            if figure is None:
                figure = t.figure(f.symbol)
            figure.fills += 1
            figure.volume += notional
            fee = dec[f.fee]
            if f.fee_currency is not None:  # else quote (most fills: no call on the hot path)
                fee = fee_in_quote(fee, price, in_base=charged_in_base(f.symbol, f.fee_currency))
            figure.fees += fee
            ts = f.ts
            if first is None or ts < first:
                first = ts
            oid = f.order_id
            if oid not in tp_ids:
                agg = derived.get(oid)
                if agg is None:
                    derived[oid] = OrderFills(f, qty, notional)
                else:
                    agg.quantity += qty
                    agg.notional += notional
                    if ts < agg.first:
                        agg.first = ts
        t.first_fill_ms = first

    def _lines(self, rows: list[FillRow]) -> bytes:
        t = self.tally
        sid, pnl_of = t.sid, t.sell_pnl.get
        seconds, prefix_of = t.ts.seconds, t.ts.prefix
        lines = []
        for f in rows:
            second, milli = divmod(f.ts, 1000)
            prefix = seconds.get(second) or prefix_of(second)
            pnl = pnl_of(f.fill_id) if f.side == "sell" else None
            lines.append(
                f"{f.fill_id}\t{sid}\t{f.order_id}\t{f.symbol}\t{f.side}\t{f.quantity}\t{f.price}\t"
                f"{f.fee}\t{f.fee_currency or ''}\t{prefix}.{milli:03d}+00\t"
                f"{'' if pnl is None else money(pnl)}\t{f.order_type or ''}\n"
            )
        try:
            return join_unescaped(lines, len(FILL_COLUMNS))
        except NeedsEscaping:
            return "".join(copy_line(self._fields(f)) for f in rows).encode()

    def _fields(self, f: FillRow) -> tuple[str, ...]:
        t = self.tally
        pnl = t.sell_pnl.get(f.fill_id) if f.side == "sell" else None
        return (
            f.fill_id,
            t.sid,
            f.order_id,
            f.symbol,
            f.side,
            f.quantity,
            f.price,
            f.fee,
            f.fee_currency or "",
            t.ts(f.ts),
            "" if pnl is None else str(money(pnl)),
            f.order_type or "",
        )


def _sorted_unique(ids: list[str]) -> list[str]:
    ids.sort()
    out: list[str] = []
    last = None
    for fid in ids:
        if fid != last:
            out.append(fid)
            last = fid
    return out
