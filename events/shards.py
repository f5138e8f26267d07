"""Which shard of the input stream a session's events go to (contract §6).

shard = crc32(session_id as UTF-8) mod N: a trader computes the same number with any
CRC-32 (IEEE 802.3, the one of zlib, gzip and PNG), so every event of a session lands in
one stream and keeps its order there.
"""

from __future__ import annotations

import zlib


def shard_of(session_id: str, shards: int) -> int:
    """The shard (0 .. shards-1) of a session's events."""
    if shards < 1:
        raise ValueError(f"shards: expected a number >= 1, got {shards}")
    return zlib.crc32(session_id.encode("utf-8")) % shards
