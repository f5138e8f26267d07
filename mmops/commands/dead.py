"""`mmops dead list|retry|purge`: inspect and act on the dead-letter stream (mm:dead).

A dead letter holds `stream`, `id`, `group`, `error`, `deliveries` and the entry's
original fields (an original field whose name collides with those is stored as
`orig_<name>`). `retry` re-XADDs the original fields to the stream they came from (a
new entry, a new id: a shard of the input stream, or mm:alerts), then deletes the dead
letter. The two are separate commands (on a Redis Cluster the streams are in different
slots): a crash in between leaves the dead letter, and retrying it once more adds the
entry again, which the invariants make harmless (a replay, docs/contract.md §4).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

import orjson

from base.settings import Settings
from mmops import runner
from mmops.reporting import fmt_ms, render_table
from storage import redis as redis_store
from storage.keys import Keys
from storage.redis import AnyRedis, StreamEntry, as_text, entries_of, stream_id

RECORD_FIELDS = ("stream", "id", "group", "error", "deliveries")
_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
PAGE = 500


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dead = sub.add_parser("dead", help="list, retry or purge dead letters (mm:dead)")
    actions = dead.add_subparsers(dest="dead_command", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="dead letters with their reasons, oldest first")
    ls.add_argument(
        "--limit", type=int, default=100, help="at most this many (default 100; 0 = all)"
    )
    ls.add_argument(
        "--json", action="store_true", help="one JSON object per line, with the original fields"
    )
    ls.set_defaults(func=lambda a: _run(_list, a))
    retry = actions.add_parser(
        "retry", help="re-add the original entries to their stream, then remove them here"
    )
    retry.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids (as listed)")
    retry.add_argument("--all", action="store_true", help="every dead letter")
    retry.set_defaults(func=lambda a: _run(_retry, a))
    purge = actions.add_parser("purge", help="delete dead letters")
    purge.add_argument("--before", metavar="ID", help="those older than this id (or epoch ms)")
    purge.add_argument("--all", action="store_true", help="all of them")
    purge.set_defaults(func=lambda a: _run(_purge, a))


class UsageError(ValueError):
    pass


def _run(action: Any, args: argparse.Namespace) -> int:
    async def main(settings: Settings) -> int:
        conn = await redis_store.connect(settings.redis_url, cluster=settings.redis_cluster)
        try:
            result: int = await action(conn, Keys.of(settings), args)
            return result
        except UsageError as exc:
            print(f"mmops dead: {exc}", file=sys.stderr)
            return 2
        finally:
            await conn.aclose()

    return runner.run(main)


# --- reading ---------------------------------------------------------------------------
def original_fields(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The dead-lettered entry's own fields (record fields dropped, orig_ prefixes undone)."""
    out: dict[bytes, bytes] = {}
    for key, value in fields.items():
        name = key.decode("utf-8", "replace")
        if name in RECORD_FIELDS:
            continue
        if name.startswith("orig_") and name[5:] in RECORD_FIELDS:
            key = name[5:].encode()
        out[key] = value
    return out


async def dead_letters(redis: AnyRedis, keys: Keys, limit: int = 0) -> list[StreamEntry]:
    """Dead letters oldest first (all of them when limit is 0), read in pages."""
    out: list[StreamEntry] = []
    start = "-"
    while True:
        count = PAGE if not limit else min(PAGE, limit - len(out))
        page = entries_of(await redis.xrange(keys.dead, min=start, max="+", count=count))
        out += page
        if len(page) < count or (limit and len(out) >= limit):
            return out
        start = "(" + page[-1][0]


async def _list(redis: AnyRedis, keys: Keys, args: argparse.Namespace) -> int:
    letters = await dead_letters(redis, keys, max(0, args.limit))
    total = int(await redis.xlen(keys.dead))
    if args.json:
        for dead_id, fields in letters:
            record = {name: as_text(fields.get(name.encode(), b"")) for name in RECORD_FIELDS}
            record["dead_id"] = dead_id
            print(
                orjson.dumps(
                    {
                        **record,
                        "fields": {
                            as_text(k): as_text(v) for k, v in original_fields(fields).items()
                        },
                    }
                ).decode()
            )
        return 0
    if not letters:
        print(f"no dead letters in {keys.dead}")
        return 0
    now = time.time_ns() // 1_000_000
    rows = [
        [
            dead_id,
            fmt_ms(now - stream_id(dead_id)[0]),
            as_text(fields.get(b"group", b"")),
            as_text(fields.get(b"stream", b"")),
            as_text(fields.get(b"id", b"")),
            int(fields.get(b"deliveries", b"0") or 0),
            as_text(original_fields(fields).get(b"type", b"-")),
            as_text(fields.get(b"error", b""))[:100],
        ]
        for dead_id, fields in letters
    ]
    print(
        render_table(
            ["DEAD ID", "AGE", "GROUP", "STREAM", "ENTRY", "DELIVERIES", "TYPE", "ERROR"], rows
        )
    )
    shown = f"{len(letters)} of {total}" if len(letters) < total else str(total)
    print(f"\n{shown} dead letters in {keys.dead}")
    return 0


# --- acting ------------------------------------------------------------------------------
async def _retry(redis: AnyRedis, keys: Keys, args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all):
        raise UsageError("retry: give dead-letter ids or --all (not both)")
    for dead_id in args.ids:
        _check_id(dead_id)
    if args.all:
        letters = await dead_letters(redis, keys)
    else:
        letters = []
        for dead_id in args.ids:
            found = entries_of(await redis.xrange(keys.dead, min=dead_id, max=dead_id))
            if not found:
                print(f"mmops dead: no dead letter {dead_id} in {keys.dead}", file=sys.stderr)
                continue
            letters.append(found[0])
    retried, skipped = await retry(redis, keys, letters)
    for dead_id, reason in skipped:
        print(f"skipped {dead_id}: {reason}", file=sys.stderr)
    print(
        f"retried {len(retried)} dead letters: re-added to their stream and removed from "
        f"{keys.dead}"
    )
    for dead_id, stream, new_id in retried:
        print(f"  {dead_id} -> {stream} {new_id}")
    missing = len(args.ids) - len(letters) if not args.all else 0
    return 1 if skipped or missing else 0


async def retry(
    redis: AnyRedis, keys: Keys, letters: list[StreamEntry]
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """XADD each letter's original fields to its stream, then XDEL it: (retried, skipped)."""
    allowed = {*keys.streams, keys.alerts}
    retried: list[tuple[str, str, str]] = []
    skipped: list[tuple[str, str]] = []
    for dead_id, fields in letters:
        original = original_fields(fields)
        stream = as_text(fields.get(b"stream", keys.stream.encode()))
        if not original:
            skipped.append(
                (dead_id, "the entry's payload is gone (trimmed before it was dead-lettered)")
            )
            continue
        if stream not in allowed:
            skipped.append((dead_id, f"it came from {stream!r}, not a stream of this deployment"))
            continue
        new_id = await redis.xadd(stream, original)  # type: ignore[arg-type]
        await redis.xdel(keys.dead, dead_id)
        retried.append((dead_id, stream, as_text(new_id)))
    return retried, skipped


async def _purge(redis: AnyRedis, keys: Keys, args: argparse.Namespace) -> int:
    if bool(args.before) == bool(args.all):
        raise UsageError("purge: give --before ID or --all (not both)")
    before = int(await redis.xlen(keys.dead))
    if args.all:
        await redis.xtrim(keys.dead, maxlen=0, approximate=False)
    else:
        _check_id(args.before)
        await redis.xtrim(keys.dead, minid=args.before, approximate=False)
    removed = before - int(await redis.xlen(keys.dead))
    print(f"purged {removed} dead letters from {keys.dead}")
    return 0


def _check_id(entry_id: str) -> None:
    if not _ID.fullmatch(entry_id):
        raise UsageError(f"not a stream id: {entry_id[:40]!r} (expected MS-SEQ or MS)")
