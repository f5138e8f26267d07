"""The coverage benchmark's own rules: how fills are matched to TPs, how a profile is read."""

from __future__ import annotations

from bench.hotpath import collapsed_top
from bench.tp_match import TpEntry, match


def tp(ms: int, kind: str, pid: str, latency: float | None = None, reason: str = "") -> TpEntry:
    return TpEntry((ms, 0), kind, ("s", pid), latency, reason)


def test_a_fill_is_matched_to_the_first_created_entry_of_its_position_after_it() -> None:
    fills = {("s", "o1"): [(100, 0)], ("s", "o2"): [(101, 0)]}
    tps = [tp(103, "created", "o2", 2.0), tp(104, "created", "o1", 4.0), tp(90, "created", "o9")]
    m = match(fills, tps)
    assert sorted(m.latencies_ms) == [2.0, 4.0]
    assert sorted(m.worker_ms) == [2.0, 4.0]
    assert (m.shared, m.uncovered) == (0, 0)


def test_fills_merged_into_one_tp_share_it_and_a_replacing_tp_covers_only_later_fills() -> None:
    fills = {("s", "o1"): [(100, 0), (100, 1), (110, 0)]}
    tps = [tp(105, "created", "o1", 5.0), tp(112, "created", "o1", 2.0)]
    m = match(fills, tps)
    assert m.latencies_ms == [5.0, 5.0, 2.0]
    assert m.shared == 1
    assert m.worker_ms == [5.0, 2.0]  # each TP's own field once


def test_a_fill_without_a_created_entry_is_counted_not_timed() -> None:
    fills = {("s", "o1"): [(100, 0)], ("s", "o2"): [(100, 1)]}
    tps = [tp(90, "created", "o1"), tp(101, "skipped", "o2", reason="dust")]
    m = match(fills, tps)
    assert (m.covered, m.uncovered) == (0, 2)
    assert m.others == {"skipped: dust": 1}


def test_collapsed_stacks_give_own_time_to_the_leaf_and_cumulative_time_to_every_frame() -> None:
    raw = (
        "main (m.py:1);f (m.py:5);g (m.py:9) 3\n"
        "main (m.py:1);f (m.py:5) 1\n"
        "main (m.py:1);g (m.py:9) 2\n"
    )
    top = collapsed_top(raw)
    by_name = {line.function: line for line in top.lines}
    assert top.total == 6
    assert (by_name["g (m.py:9)"].own, by_name["g (m.py:9)"].cum) == (5, 5)
    assert (by_name["f (m.py:5)"].own, by_name["f (m.py:5)"].cum) == (1, 4)
    assert (by_name["main (m.py:1)"].own, by_name["main (m.py:1)"].cum) == (0, 6)
