"""Stream retention: trim the input stream to MM_STREAM_RETENTION_HOURS, never past unacked work.

`trim(app, stream)` removes entries older than now - MM_STREAM_RETENTION_HOURS (XTRIM
MINID), but never an entry some consumer group still needs: the bound is lowered to, for
each group, its smallest pending id, or the id right after its last-delivered-id when
nothing is pending. A stream without groups is not trimmed (nobody has acked anything).
`trim_all(app)` does it for every shard of the input stream (MM_STREAM_SHARDS), each
against its own groups. Called from the sweeper loop; see docs/operations.md.

`trim_outputs(app)` caps the output streams once more each pass (`XTRIM MAXLEN ~` to
TAKEPROFITS_MAXLEN, ALERTS_MAXLEN, DEAD_MAXLEN): their writers cap them as they write,
this covers a writer that does not (yet) and a cap lowered since.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import ResponseError

from base import logs
from storage.redis import as_text, stream_id
from workers.parts import Parts

log = logs.get("mmops.retention")

MS_PER_HOUR = 3_600_000


@dataclass(frozen=True, slots=True)
class TrimResult:
    stream: str
    removed: int  # entries deleted by this call
    min_id: str | None  # the MINID trimmed to; None when nothing was trimmed
    reason: str  # what set the bound, or why there was no trim


async def trim_all(app: Parts, *, approximate: bool = True) -> list[TrimResult]:
    """Trim every shard of the input stream, shard 0 first."""
    return [await trim(app, stream, approximate=approximate) for stream in app.keys.streams]


async def trim(app: Parts, stream: str | None = None, *, approximate: bool = True) -> TrimResult:
    """Trim one stream of the input (default: the unsharded one; `~` MINID by default:
    cheap, may keep a few older entries)."""
    stream = stream or app.keys.stream
    hours = app.settings.stream_retention_hours
    if hours is None:
        return TrimResult(stream, 0, None, "MM_STREAM_RETENTION_HOURS is not set")
    cutoff = f"{max(0, app.clock.now_ms() - int(hours * MS_PER_HOUR))}-0"
    try:
        groups = await app.redis.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return TrimResult(stream, 0, None, "the stream does not exist")
        raise
    if not groups:
        return TrimResult(stream, 0, None, "the stream has no consumer groups")
    bound, reason = cutoff, f"retention {hours} h"
    for group in groups:
        name = as_text(group["name"])
        delivered = as_text(group.get("last-delivered-id") or "0-0")
        floor = await acked_floor(app, stream, name, delivered)
        if stream_id(floor) < stream_id(bound):
            bound, reason = floor, f"group {name} still needs entries from {floor}"
    removed = int(await app.redis.xtrim(stream, minid=bound, approximate=approximate))
    if removed:
        log.info("trimmed %d entries from %s (MINID %s: %s)", removed, stream, bound, reason)
    return TrimResult(stream, removed, bound, reason)


async def acked_floor(app: Parts, stream: str, group: str, last_delivered: str) -> str:
    """The lowest id the group may still need: its smallest pending id, else last-delivered + 1."""
    summary = await app.redis.xpending(stream, group)
    if int(summary.get("pending") or 0) and summary.get("min") is not None:
        return as_text(summary["min"])
    ms, seq = stream_id(last_delivered)
    return f"{ms}-{seq + 1}"


async def trim_outputs(app: Parts) -> dict[str, int]:
    """XTRIM MAXLEN ~ each output stream to its cap; stream -> entries removed."""
    settings, keys = app.settings, app.keys
    caps = {
        keys.takeprofits: settings.takeprofits_maxlen,
        keys.alerts: settings.alerts_maxlen,
        keys.dead: settings.dead_maxlen,
    }
    async with app.redis.pipeline(transaction=False) as pipe:
        for stream, cap in caps.items():
            pipe.xtrim(stream, maxlen=cap, approximate=True)
        removed = await pipe.execute()
    return {stream: int(n) for stream, n in zip(caps, removed, strict=True) if n}
