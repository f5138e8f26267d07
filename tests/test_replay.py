"""`mmops replay`: re-running a processed range changes nothing and leaves the group alone."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from base.settings import Settings
from events import encode
from events.schema import Fill, SessionEnded, SessionStarted
from mmops.app import App
from storage.keys import Keys
from tests.cluster import ON_BOTH
from tests.conftest import MMOPS, ROOT
from workers.coverage import CoverageHandler
from workers.runtime import Runtime

pytestmark = ON_BOTH  # single Redis and the local Redis Cluster (tests/cluster.py)

TS = 1_763_700_000_000


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


def buy(sid: str, n: int, part: int = 0) -> dict[str, str]:
    return encode(
        Fill(
            session_id=sid,
            fill_id=f"{sid}-f{n}-{part}",
            order_id=f"{sid}-o{n}",
            symbol="ETH/USD",
            side="buy",
            price=Decimal("3300.5"),
            quantity=Decimal("0.05"),
            fee=Decimal("0.41"),
            ts=TS + n + 1000 * part,
        )
    )


async def add(redis: aioredis.Redis, keys: Keys, events: list[dict[str, str]]) -> list[str]:
    return [(await redis.xadd(keys.stream, e)).decode() for e in events]  # type: ignore[arg-type]


async def drain_coverage(settings: Settings) -> None:
    app = await App.open(settings)
    handler = CoverageHandler(app)
    await Runtime(app.redis, app.keys, settings, handler, "c1", stop=app.stop).run(
        until_drained=True
    )
    await app.close()


async def group_state(redis: aioredis.Redis, keys: Keys, group: str) -> dict[str, Any]:
    info = next(g for g in await redis.xinfo_groups(keys.stream) if g["name"] == group.encode())
    consumers = await redis.xinfo_consumers(keys.stream, group)
    return {
        "last": info["last-delivered-id"],
        "pending": info["pending"],
        "lag": info.get("lag"),  # Redis >= 7 only
        "consumers": sorted((c["name"], c["pending"]) for c in consumers),
    }


def effects(out: str) -> dict[str, int]:
    rows = out[out.index("EFFECT") :].splitlines()[1:]
    return {
        line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1])
        for line in rows
        if line.startswith("  ") and line.strip()
    }


@pytest.fixture
async def processed(settings: Settings, redis: aioredis.Redis, keys: Keys) -> list[str]:
    """A session whose events the coverage worker has processed: 5 buy orders (one in 2 parts)."""
    events = [encode(SessionStarted(session_id="s-1", pairs=("ETH/USD",), ts=TS))]
    events += [buy("s-1", n) for n in range(5)] + [buy("s-1", 4, part=1)]
    events.append(encode(SessionEnded(session_id="s-1", ts=TS + 100, fills=6)))
    ids = await add(redis, keys, events)
    await drain_coverage(settings)
    assert (
        await redis.hlen(keys.paper("orders")) == 6
    )  # one TP per order + the top-up of the 2nd part
    return ids


async def test_replaying_a_processed_range_does_nothing(
    env: dict[str, str], redis: aioredis.Redis, keys: Keys, processed: list[str]
) -> None:
    before = await group_state(redis, keys, "coverage")
    orders = await redis.hgetall(keys.paper("orders"))
    takeprofits = await redis.xlen(keys.takeprofits)
    code, out, err = await mmops(env, "replay", "--group", "coverage", "--from", "-")
    assert code == 0, out + err
    assert (
        f"re-ran 8 entries of {keys.stream} ({processed[0]} .. {processed[-1]}) through the "
        "coverage handler: 8 handled" in out
    )
    assert effects(out) == {"take-profit events": 0, "fills recorded": 0, "exchange orders": 0}
    assert "effects: 0 over 1 sessions" in out
    assert await redis.hgetall(keys.paper("orders")) == orders
    assert await redis.xlen(keys.takeprofits) == takeprofits
    assert await group_state(redis, keys, "coverage") == before  # nothing read, acked or claimed


async def test_replaying_unprocessed_entries_reports_their_effects(
    env: dict[str, str], redis: aioredis.Redis, keys: Keys, processed: list[str]
) -> None:
    new = await add(redis, keys, [buy("s-2", n) for n in range(3)] + [{"type": "bogus"}])
    before = await group_state(redis, keys, "coverage")
    assert before["lag"] in (4, None)  # None on Redis 6.2, which does not report lag
    code, out, err = await mmops(
        env, "replay", "--group", "coverage", "--from", processed[-1], "--to", new[-1]
    )
    assert code == 0, out + err
    assert "re-ran 5 entries" in out and "4 handled, 1 invalid (skipped)" in out
    assert effects(out) == {"take-profit events": 3, "fills recorded": 3, "exchange orders": 3}
    assert await group_state(redis, keys, "coverage") == before
    # the workers later process the same entries: nothing is placed twice
    code, out, _ = await mmops(env, "replay", "--group", "coverage", "--from", new[0])
    assert effects(out) == {"take-profit events": 0, "fills recorded": 0, "exchange orders": 0}


async def test_reset_moves_the_group_for_a_full_reprocess(
    env: dict[str, str], settings: Settings, redis: aioredis.Redis, keys: Keys, processed: list[str]
) -> None:
    orders = await redis.hlen(keys.paper("orders"))
    code, out, err = await mmops(env, "replay", "--reset", "coverage", "--to", "0")
    assert code == 0, err
    assert f"moved from {processed[-1]} to 0" in out
    state = await group_state(redis, keys, "coverage")
    assert state["last"] == b"0-0"
    await drain_coverage(settings)
    assert (await group_state(redis, keys, "coverage"))["last"] == processed[-1].encode()
    assert await redis.hlen(keys.paper("orders")) == orders


async def test_usage_errors(env: dict[str, str], redis: aioredis.Redis, keys: Keys) -> None:
    code, _, err = await mmops(env, "replay", "--group", "coverage")
    assert (
        code == 2
        and err.strip() == "mmops replay: --from: expected an entry id (MS or MS-SEQ) or '-'"
    )
    code, _, err = await mmops(env, "replay", "--reset", "coverage")
    assert code == 2 and "--reset GROUP needs --to ID" in err
    code, _, err = await mmops(env, "replay", "--reset", "coverage", "--to", "0")
    assert code == 1 and f"no group 'coverage' on {keys.stream}" in err


async def test_migrator_replay_writes_once(
    env: dict[str, str], redis: aioredis.Redis, keys: Keys, pg: asyncpg.Pool, processed: list[str]
) -> None:
    # the migrator group never ran: replaying the range migrates the session
    code, out, err = await mmops(env, "replay", "--group", "migrator", "--from", "-")
    assert code == 0, out + err
    first = effects(out)
    assert (
        first["sessions rows"] == 1
        and first["fills rows"] == 6
        and first["session_pairs rows"] == 1
    )
    assert first["orders rows"] >= 5 + 6  # the trader's buy orders and the TPs
    assert await redis.exists(keys.migration_completed("s-1"))
    assert await pg.fetchval("SELECT total_fills FROM sessions WHERE id = 's-1'") == 6
    code, out, err = await mmops(
        env, "replay", "--group", "migrator", "--from", processed[0], "--to", processed[-1]
    )
    assert code == 0, out + err
    assert set(effects(out).values()) == {0}
    assert "re-ran 8 entries" in out and "8 handled" in out
