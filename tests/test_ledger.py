"""The one write path (storage/ledger.py): compare-and-set commits with their fill guard and
the operations they carry (storage/ops.py). Each test runs on fakeredis (the unit layer)
and on the test Redis (`redis_or_fake`): the script must mean the same on both."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from events.schema import Fill
from storage import ops
from storage.keys import Keys
from storage.ledger import AlreadyRecorded, Applied, Ledger, VersionMoved, Write, decode_fill

SID = "s-1"


def doc(version: int, body: str = "") -> bytes:
    return f'{{"v":{version}{body}}}'.encode()


def buy(fill_id: str = "f-1") -> Fill:
    return Fill(
        session_id=SID,
        fill_id=fill_id,
        order_id="o-1",
        symbol="BTC/USD",
        side="buy",
        price=Decimal("64000.5"),
        quantity=Decimal("0.01"),
        fee=Decimal("1.024008"),
        ts=1_763_700_000_000,
    )


@pytest.fixture
def keys(names: tuple[str, str]) -> Keys:
    return Keys(names[0])


@pytest.fixture
def ledger(redis_or_fake: aioredis.Redis, keys: Keys) -> Ledger:
    return Ledger(redis_or_fake, keys)


async def test_a_change_its_fill_and_its_effects_are_applied_together(
    ledger: Ledger, redis_or_fake: aioredis.Redis, keys: Keys
) -> None:
    k = keys.prefix
    effects = [
        ops.hset(k + "h", {"status": "live", "n": 3}),
        ops.sadd(k + "set", "a", "b"),
        ops.zadd(k + "z", 1_763_700_000_000, "s-1"),
        ops.zadd(k + "z", 1, "s-1", only_new=True),  # NX: the first score stays
        ops.hincrby(k + "m", "created", 2),
        ops.set_value(k + "attempt", "cid-1", ttl_s=60),
        ops.xadd(k + "out", {"type": "created", "qty": "0.01"}),
        ops.decimal_incrby(k + "m", "total", Decimal("645.849")),
    ]
    reply = await ledger.commit(SID, [Write("o-1", 0, doc(1, ',"a":1'))], fill=buy(), ops=effects)

    assert reply == Applied()
    assert await redis_or_fake.hget(keys.positions(SID), "o-1") == doc(1, ',"a":1')
    assert decode_fill(await redis_or_fake.hget(keys.fills(SID), "f-1")) == buy()
    assert await redis_or_fake.hgetall(k + "h") == {b"status": b"live", b"n": b"3"}
    assert await redis_or_fake.smembers(k + "set") == {b"a", b"b"}
    assert await redis_or_fake.zscore(k + "z", "s-1") == 1_763_700_000_000
    assert await redis_or_fake.get(k + "attempt") == b"cid-1"
    assert 0 < await redis_or_fake.ttl(k + "attempt") <= 60
    [(_, fields)] = await redis_or_fake.xrange(k + "out")
    assert fields == {b"type": b"created", b"qty": b"0.01"}
    assert await redis_or_fake.hgetall(k + "m") == {
        b"created": b"2",
        b"total_e8": b"64584900000",
        b"total": b"645.84900000",
    }


async def test_a_moved_version_changes_nothing(
    ledger: Ledger, redis_or_fake: aioredis.Redis, keys: Keys
) -> None:
    assert await ledger.commit(SID, [Write("o-1", 0, doc(1))]) == Applied()
    late = [ops.sadd(keys.prefix + "set", "x")]
    reply = await ledger.commit(SID, [Write("o-1", 0, doc(1, ',"late":1'))], fill=buy(), ops=late)

    assert reply == VersionMoved("o-1", doc(1))
    assert await redis_or_fake.hget(keys.positions(SID), "o-1") == doc(1)
    assert await redis_or_fake.hexists(keys.fills(SID), "f-1") == 0  # the fill is not recorded
    assert await redis_or_fake.exists(keys.prefix + "set") == 0  # nor its effects


async def test_a_recorded_fill_changes_nothing_and_returns_the_stored_document(
    ledger: Ledger, redis_or_fake: aioredis.Redis, keys: Keys
) -> None:
    assert await ledger.commit(SID, [Write("o-1", 0, doc(1))], fill=buy()) == Applied()
    again = [ops.hincrby(keys.prefix + "m", "created", 1)]
    reply = await ledger.commit(SID, [Write("o-1", 1, doc(2))], fill=buy(), ops=again)

    assert reply == AlreadyRecorded("o-1", doc(1))
    assert await redis_or_fake.hget(keys.positions(SID), "o-1") == doc(1)
    assert await redis_or_fake.exists(keys.prefix + "m") == 0
    assert await ledger.commit(SID, [], fill=buy()) == AlreadyRecorded("", None)
    assert await ledger.commit(SID, [], fill=buy("f-2")) == Applied()


async def test_documents_of_one_commit_move_together_or_not_at_all(
    ledger: Ledger, redis_or_fake: aioredis.Redis, keys: Keys
) -> None:
    assert await ledger.commit(SID, [Write("o-1", 0, doc(1)), Write("o-2", 0, doc(1))]) == Applied()
    both = [Write("o-1", 1, doc(2)), Write("o-2", 7, doc(8))]  # o-2 is not at version 7

    assert await ledger.commit(SID, both) == VersionMoved("o-2", doc(1))
    assert await redis_or_fake.hgetall(keys.positions(SID)) == {b"o-1": doc(1), b"o-2": doc(1)}


async def test_concurrent_commits_on_one_version_apply_exactly_once(
    ledger: Ledger, redis_or_fake: aioredis.Redis, keys: Keys
) -> None:
    replies = await asyncio.gather(
        *(ledger.commit(SID, [Write("o-1", 0, doc(1, f',"by":{n}'))]) for n in range(8))
    )

    applied = [n for n, reply in enumerate(replies) if reply == Applied()]
    assert len(applied) == 1
    winner = doc(1, f',"by":{applied[0]}')
    assert all(r == VersionMoved("o-1", winner) for r in replies if r != Applied())
    assert await redis_or_fake.hget(keys.positions(SID), "o-1") == winner


@pytest.mark.parametrize(
    ("amounts", "text", "units"),
    [
        (["0.1", "0.2"], "0.30000000", 30_000_000),
        (["0.1", "0.2", "-0.35"], "-0.05000000", -5_000_000),
        (["12345678.12345678"], "12345678.12345678", 1_234_567_812_345_678),
        (["0.000000005", "0.000000015"], "0.00000002", 2),  # half-even to 1e-8: 0, then 2
        (["1", "-1"], "0.00000000", 0),
    ],
)
async def test_decimal_counters_are_exact(
    ledger: Ledger,
    redis_or_fake: aioredis.Redis,
    keys: Keys,
    amounts: list[str],
    text: str,
    units: int,
) -> None:
    for amount in amounts:
        bump = [ops.decimal_incrby(keys.prefix + "m", "pnl", Decimal(amount))]
        assert await ledger.commit(SID, [], ops=bump) == Applied()

    assert await redis_or_fake.hget(keys.prefix + "m", "pnl") == text.encode()
    assert await redis_or_fake.hget(keys.prefix + "m", "pnl_e8") == str(units).encode()


def test_only_plain_commands_run_outside_the_script() -> None:
    assert ops.hset("h", {"a": "1", "b": 2}).command() == ("HSET", "h", "a", "1", "b", 2)
    assert ops.zadd("z", 5, "m", only_new=True).command() == ("ZADD", "z", "NX", 5, "m")
    assert ops.xadd("s", {"k": "v"}, maxlen=100).command() == (
        "XADD",
        "s",
        "MAXLEN",
        "~",
        100,
        "*",
        "k",
        "v",
    )
    counter = ops.decimal_incrby("m", "total", Decimal("1.5"))
    assert counter.wire() == ["decimal_incrby", "m", "total", 150_000_000]
    with pytest.raises(ValueError, match="only inside the commit script"):
        counter.command()
