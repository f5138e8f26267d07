"""Every atomic step touches one hash slot: the keys each Lua script and each MULTI is given,
built by `storage.keys.Keys` for prefixes with and without a hash tag and for 1 and 4
shards, go through `storage.scripts.slot_of` (CrossSlot if they span slots).

The global keys (mm:takeprofits, mm:sessions, mm:sessions:ended) are in slots of their
own; a commit's writes to them go through the session's outbox (storage/outbox.py).
"""

from __future__ import annotations

import inspect

import pytest
from redis.crc import key_slot

from storage.keys import Keys, hash_tag
from storage.scripts import CrossSlot, slot_of
from workers.groups import GROUPS

SID = "s-42"
KEYSETS = [
    Keys("", "mm:events", 1),
    Keys("t1a2b3:", "mm:events", 1),
    Keys("", "mm:events", 4),
    Keys("t1a2b3:", "mm:events", 4),
    Keys("{app}:", "mm:events", 4),  # a prefix with its own tag: every key in one slot
    Keys("p:", "trader:in", 2),
]


def per_session(keys: Keys) -> dict[str, str]:
    """Every per-session key Keys builds (any method taking a session id, but the name of
    the session's input stream)."""
    out: dict[str, str] = {}
    for name, method in inspect.getmembers(keys, inspect.ismethod):
        params = list(inspect.signature(method).parameters)
        if params[:1] == ["sid"] and name not in ("stream_for", "session_keys"):
            out[name] = method(*[SID if p == "sid" else "x-1" for p in params])
    return out


@pytest.mark.parametrize("keys", KEYSETS, ids=repr)
def test_every_key_of_a_session_is_in_the_sessions_slot(keys: Keys) -> None:
    built = per_session(keys)
    assert {"positions", "fills", "tp_order", "settlement_lock", "migration_completed"} <= set(
        built
    )
    slot_of(list(built.values()))
    if not keys.prefix.startswith("{"):
        assert {key_slot(k.encode()) for k in built.values()} == {key_slot(SID.encode())}


@pytest.mark.parametrize("keys", KEYSETS, ids=repr)
def test_a_runtime_acks_and_forgets_failures_on_its_streams_slot(keys: Keys) -> None:
    """XACK on the stream + HDEL of the group's failure counts (workers/runtime.py), and the
    dead-letter marker beside mm:dead (workers/dead_letters.py), for every group's stream."""
    for group in GROUPS.values():
        for stream in group.streams(keys):
            failures = keys.failures(group.name, stream)
            assert failures.startswith(keys.prefix)
            slot_of([stream, failures])
            slot_of([keys.dead, keys.dead_marker(stream, "1-0")])
            assert keys.dead_marker(stream, "1-0").startswith(keys.prefix)
    if keys.shards > 1:  # each shard its own slot, unless the prefix's tag overrides it
        slots = {slot_of([s, keys.failures("coverage", s)]) for s in keys.streams}
        assert len(slots) == (1 if keys.prefix.startswith("{") else keys.shards)


def test_failure_counts_are_named_after_their_stream() -> None:
    assert Keys().failures("coverage", "mm:events") == "{mm:events}:failures:coverage"
    four = Keys("", "mm:events", 4)
    assert four.failures("migrator", four.streams[2]) == "mm:events:{2}:failures:migrator"
    assert Keys("t:").failures("coverage", "t:mm:events") == "t:{t:mm:events}:failures:coverage"
    assert Keys().dead_marker("mm:events:{1}", "5-0") == "{mm:dead}:seen:mm:events:{1}:5-0"
    assert hash_tag("a{b}c") == "b" and hash_tag("a{}b{c}") is None and hash_tag("ab") is None


@pytest.mark.parametrize("keys", KEYSETS, ids=repr)
def test_the_multis_and_scripts_outside_the_commit(keys: Keys) -> None:
    """Each MULTI and each script call site's keys, as the code builds them."""
    steps = {
        # workers/sweep_pass.py SessionSweep._record (MULTI)
        "sweep record": [
            keys.settlement_status(SID),
            keys.settlement_last_run(SID),
            keys.metrics_settlement(SID),
        ],
        # workers/migrator.py _mark_completed (MULTI; the index is written after it)
        "migration marker": [keys.migration_completed(SID), keys.metrics_migration(SID)],
        # storage/ledger.py commit: the declared keys
        "commit (declared keys)": [keys.positions(SID), keys.fills(SID)],
        # trading/tp_records.py: the per-session records a commit carries
        "tp records": [
            keys.positions(SID),
            keys.tp_order(SID, "OID-1"),
            keys.tp_orders(SID),
            keys.tp_attempt(SID, "o-1"),
            keys.tp_clients(SID),
            keys.tp_inflight(SID),
            keys.metrics_takeprofit(SID),
        ],
        # storage/orders.py (script), workers/closing.py's look-ups
        "orders": [keys.orders(SID)],
        # trading/paper (every script of the account)
        "paper account": [
            keys.paper(n) for n in ("orders", "clients", "free", "locked", "prices", "seen_fills")
        ],
        # storage/locks.py (one key each), mmops status's lease MULTI
        "sweeper lease": [keys.sweeper_lease],
        "session lock": [keys.settlement_lock(SID)],
        # workers/stream_care.py _DELCONSUMER_IF_IDLE: one stream
        **{f"delconsumer {s}": [s] for s in keys.streams},
    }
    for name, step in steps.items():
        try:
            slot_of(step)
        except CrossSlot as exc:
            raise AssertionError(f"{name}: {exc}") from None


@pytest.mark.parametrize("keys", KEYSETS, ids=repr)
def test_what_retention_removes_of_a_session_is_one_slot(keys: Keys) -> None:
    slot_of(keys.session_keys(SID, ["o-1", "o-2"], ["p-1"]))


@pytest.mark.parametrize("keys", KEYSETS[:4], ids=repr)
def test_the_global_keys_are_in_other_slots_so_the_commit_routes_them(keys: Keys) -> None:
    """mm:takeprofits, mm:sessions and mm:sessions:ended are not in a session's slot: on a
    cluster the ledger sends the writes to them through the session's outbox
    (storage/outbox.py, tests/test_outbox.py)."""
    for global_key in (keys.takeprofits, keys.sessions, keys.sessions_ended):
        with pytest.raises(CrossSlot):
            slot_of([keys.positions(SID), global_key])
