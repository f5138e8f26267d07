"""Fills matched to their take-profits on Redis's clock (issue 12, item 2).

A fill is identified by (session_id, order_id) and the stream id Redis gave it in
`mm:events`; a TP by the stream id of its `created` entry in `mm:takeprofits`, whose
(session_id, position_id) is the fill's (session_id, order_id): a position is its buy
order. The rule: a fill's TP is the first `created` entry of its position whose id
comes after the fill's id. A fill merged with others of its position into one TP (one
batch, one step) is matched to that TP too, and counted as `shared`; a fill after which
its position got no `created` entry is excluded from the latencies and counted as
`uncovered`, with the other entries (`skipped`, `failed` and their reasons) tallied.
Both ids are Redis's, so the latency has 1 ms resolution and no clock skew.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from storage.redis import as_text, entries_of, stream_id

PAGE = 10_000

Position = tuple[str, str]  # (session_id, position_id = the buy's order_id)
StreamId = tuple[int, int]


@dataclass(frozen=True, slots=True)
class TpEntry:
    id: StreamId
    type: str
    position: Position
    latency_ms: float | None  # the worker's own field (fill XADD -> exchange ack)
    reason: str


async def read_tps(redis: aioredis.Redis, stream: str, after: str = "-") -> list[TpEntry]:
    """Every `mm:takeprofits` entry after `after` (exclusive; "-": all), in stream order."""
    out: list[TpEntry] = []
    low = after if after == "-" else f"({after}"
    while True:
        page = entries_of(await redis.xrange(stream, min=low, max="+", count=PAGE))
        for entry_id, fields in page:
            text = {as_text(k): as_text(v) for k, v in fields.items()}
            latency = text.get("latency_ms", "")
            out.append(
                TpEntry(
                    stream_id(entry_id),
                    text.get("type", ""),
                    (text.get("session_id", ""), text.get("position_id", "")),
                    float(latency) if latency else None,
                    text.get("reason", ""),
                )
            )
        if len(page) < PAGE:
            return out
        low = f"({page[-1][0]}"


@dataclass
class Matched:
    """Fills and the TPs that cover them, on Redis's clock."""

    latencies_ms: list[float] = field(default_factory=list)  # per covered fill
    tp_ms: list[int] = field(default_factory=list)  # the covering `created` entry, per fill
    worker_ms: list[float] = field(default_factory=list)  # latency_ms of each TP matched
    shared: int = 0  # covered by a TP an earlier fill of its position got too (merged)
    uncovered: int = 0  # no `created` entry of its position after it
    others: Counter[str] = field(default_factory=Counter)  # "skipped: reason" etc.

    @property
    def covered(self) -> int:
        return len(self.latencies_ms)

    def others_text(self) -> str:
        return ", ".join(f"{n} {what}" for what, n in self.others.most_common(4)) or "none"


def match(fills: Mapping[Position, Iterable[StreamId]], tps: Iterable[TpEntry]) -> Matched:
    """Each fill (its position -> the stream ids of its fills) to its position's first
    `created` entry after it."""
    created: dict[Position, list[TpEntry]] = {}
    out = Matched()
    for tp in tps:
        if tp.position not in fills:
            continue
        if tp.type == "created":
            created.setdefault(tp.position, []).append(tp)  # already in stream order
        else:
            out.others[f"{tp.type}: {tp.reason}" if tp.reason else tp.type] += 1
    taken: set[StreamId] = set()
    for position, fill_ids in fills.items():
        entries = created.get(position, [])
        ids = [tp.id for tp in entries]
        for fill_id in sorted(fill_ids):
            at = bisect.bisect_right(ids, fill_id)
            if at == len(ids):
                out.uncovered += 1
                continue
            tp = entries[at]
            out.latencies_ms.append(float(tp.id[0] - fill_id[0]))
            out.tp_ms.append(tp.id[0])
            if tp.id in taken:
                out.shared += 1
            else:
                taken.add(tp.id)
                if tp.latency_ms is not None:
                    out.worker_ms.append(tp.latency_ms)
    return out
