"""`mmops emit key=value ...`: validate one event and XADD it, printing the entry id.

The event goes to its session's shard of the input stream (MM_STREAM_SHARDS, contract §6):
`mm:events` when unsharded, else `mm:events:{crc32(session_id) mod N}`.
"""

from __future__ import annotations

import argparse
import sys

from base.settings import Settings
from events import EventError, decode, encode
from mmops import runner
from storage import redis as redis_store
from storage.keys import Keys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser(
        "emit",
        help="validate one event and XADD it to its session's shard of the input stream",
        description="Example: mmops emit type=fill session_id=s-42 fill_id=f-1 order_id=o-7 "
        "symbol=BTC/USD side=buy price=64000.5 quantity=0.010 fee=0.16 ts=1763700000000",
    )
    cmd.add_argument("fields", nargs="+", metavar="KEY=VALUE")
    cmd.set_defaults(func=_emit)


def _emit(args: argparse.Namespace) -> int:
    fields: dict[str, str] = {}
    for item in args.fields:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"mmops emit: expected KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        fields[key] = value
    try:
        event = decode(fields)
    except EventError as exc:
        print(f"mmops emit: invalid event: {exc}", file=sys.stderr)
        return 2

    async def send(settings: Settings) -> str:
        conn = await redis_store.connect(settings.redis_url, cluster=settings.redis_cluster)
        try:
            stream = Keys.of(settings).stream_for(event.session_id)
            entry_id = await conn.xadd(stream, encode(event))  # type: ignore[arg-type]
        finally:
            await conn.aclose()
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    print(runner.run(send))
    return 0
