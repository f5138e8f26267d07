"""The paper exchange is cluster-ready: every key of the account is in one hash slot, so
every script and every MULTI touches one slot; shown with key_slot and on a real
Redis in cluster mode (one node owning all slots refuses any cross-slot command)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.cluster import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from storage.keys import Keys
from storage.servers import free_port, redis_server_binary
from tests.conftest import wait_for
from tests.test_paper_batch import RecordingExchange
from trading.exchange import Order, SeenFill, SellRequest, TransientError
from trading.paper import PaperExchange, PaperFaults, scripts
from trading.paper.exchange import KEY_NAMES

D = Decimal
SCRIPTS = {
    getattr(scripts, name): name
    for name in dir(scripts)
    if name.endswith("_LUA") and name[0] != "_"
}


def slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


@pytest.mark.parametrize("prefix", ["", "t1:", "mm:prod:", "x{tenant}:", "a{"])
def test_every_key_of_the_account_has_one_slot(prefix: str) -> None:
    keys = Keys(prefix)
    names = [keys.paper(name) for name in KEY_NAMES]
    assert all(name.startswith(f"{prefix}paper:") for name in names)  # the prefix stays in front
    assert len(slots(names)) == 1


async def exercise(ex: PaperExchange) -> None:
    """Every operation of the exchange at least once, every script among them."""
    await ex.set_price("BTC/USD", D("50000"))
    await ex.observe_fill(
        fill_id="f1", order_id="b1", symbol="FOO/USD", side="buy", price=D("2"), quantity=D("3")
    )
    await ex.observe_fills(  # the batch form (the coverage hot path): its own script
        [
            SeenFill(
                fill_id="f2",
                order_id="b2",
                symbol="BTC/USD",
                side="buy",
                price=D("50000"),
                quantity=D("1"),
            )
        ]
    )
    await ex.observe_fills(
        [SeenFill(fill_id="f3", order_id="b3", symbol="ETH/USD", side="buy", price=D("3000"),
                  quantity=D("0"))]
    )  # fmt: skip
    first, _, _ = await ex.place_limit_sells(
        [
            SellRequest(symbol="BTC/USD", amount=D("0.2"), price=D("51000"), client_id="c1"),
            SellRequest(symbol="BTC/USD", amount=D("0.2"), price=D("49000"), client_id="c2"),
            SellRequest(symbol="FOO/USD", amount=D("1"), price=D("3"), client_id="c3"),
        ]
    )
    assert isinstance(first, Order)
    second = await ex.place_limit_sell(
        symbol="BTC/USD", amount=D("0.3"), price=D("52000"), client_id="c4"
    )
    await ex.fill_order(first.id, D("0.1"))
    await ex.cancel_order(symbol="BTC/USD", order_id=second.id)
    assert await ex.fetch_order(symbol="BTC/USD", order_id=first.id) is not None
    assert await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id="c4") is not None
    assert [o.client_id for o in await ex.open_orders()] == ["c1", "c3"]
    assert len(await ex.orders()) == 3
    await ex.market("FOO/USD")
    await ex.quote("BTC/USD")
    assert await ex.free_balance("BTC") == D("0.8")
    assert await ex.balances() == {"BTC": D("0.9"), "FOO": D("3"), "USD": D("5187.25")}
    changes = await ex.order_changes(None)
    assert changes.complete and [o.client_id for o in changes.orders] == ["c1", "c3"]
    assert await ex.forget(order_ids=[second.id], fill_ids=["f1"]) == 1


async def test_each_script_call_touches_one_slot(redis: aioredis.Redis, keys: Keys) -> None:
    ex = RecordingExchange(redis=redis, keys=keys, starting_balances={"USD": D("100")})
    await exercise(ex)
    assert {SCRIPTS[script] for script, _ in ex.calls} == set(SCRIPTS.values())
    for script, called_with in ex.calls:
        assert called_with, SCRIPTS[script]
        assert len(slots(called_with)) == 1, (SCRIPTS[script], called_with)
    all_keys = [key for _, called_with in ex.calls for key in called_with]
    assert slots(all_keys) == slots([keys.paper("orders")])  # and it is the account's slot


# --- a real Redis in cluster mode ----------------------------------------------------
def cluster_port_pair() -> int:
    """A free port whose cluster bus port (+10000, fixed before Redis 7) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server with cluster-enabled that owns all 16384 slots; its URL."""
    directory: Path = tmp_path_factory.mktemp("cluster-node")
    port = cluster_port_pair()
    options = {
        "port": str(port),
        "bind": "127.0.0.1",
        "cluster-enabled": "yes",
        "cluster-config-file": str(directory / "nodes.conf"),
        "dir": str(directory),
        "save": "",
        "appendonly": "no",
    }
    args = [redis_server_binary()] + [a for k, v in options.items() for a in (f"--{k}", v)]
    with (directory / "redis.log").open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
async def cluster(cluster_node: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(cluster_node)

    async def up() -> bool:
        try:
            return bool(await client.ping())
        except RedisConnectionError:
            return False

    await wait_for(up)
    info = await client.execute_command("CLUSTER", "INFO")
    if b"cluster_slots_assigned:16384" not in info:
        await client.execute_command("CLUSTER", "ADDSLOTS", *range(16384))

    async def ready() -> bool:
        return b"cluster_state:ok" in await client.execute_command("CLUSTER", "INFO")

    await wait_for(ready)
    yield client
    await client.flushall()
    await client.aclose()


@pytest.mark.redis
@pytest.mark.process  # a cluster-enabled redis-server of its own
async def test_the_node_refuses_cross_slot_scripts(cluster: aioredis.Redis) -> None:
    """The control: this server really checks slots, so the test below means something."""
    with pytest.raises(ResponseError, match="same slot"):
        await cluster.eval("return 1", 2, "paper:{a}:x", "paper:{b}:y")


@pytest.mark.redis
@pytest.mark.process
async def test_the_paper_exchange_runs_on_a_cluster_node(cluster: aioredis.Redis) -> None:
    keys = Keys("t1:")
    ex = PaperExchange(redis=cluster, keys=keys, starting_balances={"USD": D("100")})
    await exercise(ex)
    faulty = PaperExchange(
        redis=cluster, keys=keys, faults=PaperFaults({"place_5xx": 0.5, "fetch_5xx": 1.0}, seed=5)
    )
    await faulty.place_limit_sells(
        [
            SellRequest(symbol="FOO/USD", amount=D("0.1"), price=D("3"), client_id=f"f{i}")
            for i in range(10)
        ]
    )
    with pytest.raises(TransientError):
        await faulty.open_orders()
    counts = await faulty.fault_counts()
    assert counts["fetch_5xx"] == 1 and counts["place_5xx"] >= 1
