"""Fuzzing the real input path (docs/contract.md §1): 10,000 hostile entries (bench/hostile.py,
each a plausible event with one fault, two of them 10 MB) XADDed raw among valid sessions,
then the registry's coverage and migrator runtimes drain the stream on the paper exchange.

Every hostile entry is dead-lettered once, with its reason and at most MAX_ENTRY_BYTES of
its fields; no runtime dies; every valid fill gets its TP and every valid session reaches
PostgreSQL; nothing is left pending; Redis holds the input plus a bounded record per entry.
bench/fuzz.py does the work (and `python -m bench.fuzz` prints it as a table)."""

from __future__ import annotations

import random

import asyncpg

from bench.fuzz import VALID, build_input, fuzz, table
from bench.hostile import HUGE, KINDS
from tests.conftest import MakeApp

ENTRIES = 10_000


async def test_hostile_entries_are_dead_lettered_once_and_valid_ones_processed(
    make_app: MakeApp, pg: asyncpg.Pool
) -> None:
    # mm:dead is capped at DEAD_MAXLEN (10,000 by default): room for every record of the run
    app = await make_app(dead_maxlen=3 * ENTRIES)
    items = build_input(random.Random(11), ENTRIES, now_ms=app.clock.now_ms(), max_huge=2)
    assert sum(item.hostile for item in items) == ENTRIES

    report = await fuzz(app, items)

    assert report.crashes == [], table(report)
    assert report.problems == [], table(report)
    hostile = {kind: row for kind, row in report.rows.items() if kind != VALID}
    assert set(hostile) == set(KINDS) and hostile[HUGE].sent == 2
    assert all(row.dead == row.sent for row in hostile.values())  # each exactly once
    assert sum(row.sent for row in hostile.values()) == ENTRIES
    assert report.rows[VALID].dead == 0
    # the worker reads the raw field pairs: a dict would have kept the valid last value
    assert all("repeated field" in reason for reason in hostile["repeated_field"].reasons)
    assert all("larger than 4096 bytes" in reason for reason in hostile[HUGE].reasons)
    for group in ("coverage", "migrator"):  # every group finds each invalid; one record
        assert report.stats[group] == {
            "processed": report.rows[VALID].sent,
            "dead": ENTRIES,
            "failed": 0,
        }
    assert report.pending == {"coverage": 0, "migrator": 0}
    assert report.fills > 0 and report.covered == report.fills
    assert report.sessions > 0 and report.migrated == report.sessions
    # Redis holds the input stream and a bounded record per entry, not copies of 10 MB values
    assert report.added_bytes <= report.added_bound
    assert report.memory_growth <= report.memory_bound
