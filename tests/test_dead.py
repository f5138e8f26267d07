"""`mmops dead list|retry|purge` on dead letters made by the real runtime."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis

from base.settings import Settings
from mmops.app import App
from storage.keys import Keys
from tests.conftest import MMOPS, ROOT
from workers.coverage import CoverageHandler
from workers.runtime import Runtime

BAD = [
    {"type": "fill", "session_id": "s-1", "fill_id": "f-1"},  # fields missing
    {"type": "teleport", "session_id": "s-1"},  # unknown type
    {
        "type": "session_ended",
        "session_id": "s-2",
        "ts": "1",
        "id": "x",
        "group": "g",
    },  # fields that collide
]


async def mmops(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *MMOPS,
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def dead_lettered(settings: Settings, redis: aioredis.Redis, keys: Keys) -> list[str]:
    """XADD the bad entries and let a coverage worker dead-letter them; their input ids."""
    ids = [(await redis.xadd(keys.stream, fields)).decode() for fields in BAD]  # type: ignore[arg-type]
    app = await App.open(settings)
    handler = CoverageHandler(app)
    stats = await Runtime(app.redis, app.keys, settings, handler, "c1", stop=app.stop).run(
        until_drained=True
    )
    await app.close()
    assert stats.dead == len(BAD)
    return ids


async def test_list_shows_reasons(
    env: dict[str, str], settings: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    code, out, _ = await mmops(env, "dead", "list")
    assert code == 0 and "no dead letters" in out
    ids = await dead_lettered(settings, redis, keys)
    code, out, err = await mmops(env, "dead", "list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "DEAD",
        "ID",
        "AGE",
        "GROUP",
        "STREAM",
        "ENTRY",
        "DELIVERIES",
        "TYPE",
        "ERROR",
    ]
    assert "3 dead letters" in out
    assert "unknown event type 'teleport'" in out and "missing" in out
    for entry_id in ids:
        assert entry_id in out
    # columns line up: the ERROR column starts at the same offset on every row
    start = lines[0].index("ERROR")
    assert all(line[start - 2 : start] == "  " for line in lines[1:4])
    code, out, _ = await mmops(env, "dead", "list", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == ids and all(r["group"] == "coverage" for r in rows)
    assert rows[2]["fields"] == {k: v for k, v in BAD[2].items()}


async def test_retry_re_adds_the_original_entry(
    env: dict[str, str], settings: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    await dead_lettered(settings, redis, keys)
    letters = [(i.decode(), f) for i, f in await redis.xrange(keys.dead)]
    before = await redis.xlen(keys.stream)
    code, out, err = await mmops(env, "dead", "retry", letters[2][0])
    assert code == 0, err
    assert await redis.xlen(keys.dead) == 2
    assert await redis.xlen(keys.stream) == before + 1
    _, fields = (await redis.xrevrange(keys.stream, count=1))[0]
    assert {k.decode(): v.decode() for k, v in fields.items()} == BAD[
        2
    ]  # orig_id/orig_group restored
    code, out, err = await mmops(env, "dead", "retry", "--all")
    assert code == 0 and "retried 2" in out
    assert await redis.xlen(keys.dead) == 0
    assert await redis.xlen(keys.stream) == before + 3
    code, _, err = await mmops(env, "dead", "retry", "12-0")
    assert code == 1 and "no dead letter 12-0" in err
    code, _, err = await mmops(env, "dead", "retry")
    assert (
        code == 2 and err.strip() == "mmops dead: retry: give dead-letter ids or --all (not both)"
    )


async def test_purge(
    env: dict[str, str], settings: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    await dead_lettered(settings, redis, keys)
    letters = [i.decode() for i, _ in await redis.xrange(keys.dead)]
    code, out, _ = await mmops(env, "dead", "purge", "--before", letters[1])
    assert code == 0 and "purged 1" in out
    assert [i.decode() for i, _ in await redis.xrange(keys.dead)] == letters[1:]
    code, out, _ = await mmops(env, "dead", "purge", "--all")
    assert code == 0 and "purged 2" in out and await redis.xlen(keys.dead) == 0
    code, _, err = await mmops(env, "dead", "purge", "--before", "yesterday")
    assert code == 2 and "not a stream id" in err


async def test_the_alert_of_a_dead_letter_shows_a_bounded_session_id(
    settings: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    """Found by bench/fuzz.py: the alert copied the entry's session_id whole, so a 10 MB one
    made a 10 MB alert (and a 10 MB webhook post); mm:dead itself kept 4 KB."""
    huge = {"type": "session_ended", "session_id": "s-" * 5_000_000, "ts": "1"}
    blank = {"type": "session_ended", "session_id": "s 42", "ts": "1"}
    for fields in (huge, blank):
        await redis.xadd(keys.stream, fields)  # type: ignore[arg-type]
    app = await App.open(settings)
    handler = CoverageHandler(app)
    stats = await Runtime(app.redis, app.keys, settings, handler, "c1", stop=app.stop).run(
        until_drained=True
    )
    await app.close()
    assert stats.dead == 2
    alerts = [fields for _, fields in await redis.xrange(keys.alerts)]
    shown = [a[b"session_id"].decode() for a in alerts]
    assert shown[0] == "'" + "s-" * 31 + "s…" and shown[1] == "s 42"  # 64 characters and "…"
    assert all(sum(len(k) + len(v) for k, v in a.items()) < 1000 for a in alerts)
