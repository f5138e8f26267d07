"""Lanes: which entries of a batch must wait for which (stream order where it matters).

A lane is a path — (session,), (session, symbol), (session, symbol, order). An entry
waits for the latest earlier entry of its own lane, of each ancestor lane (a prefix)
and of each descendant lane; everything else runs side by side. Coverage gives a buy
(session, symbol, order), another sell (session, symbol) and a session event
(session,): fills of different buy orders run concurrently, a FIFO sell waits for the
pair's earlier fills, a session event for the whole session.
"""

from __future__ import annotations

from collections.abc import Sequence

Lane = tuple[str, ...]

LEFT_PENDING = -1.0  # an entry failed: it and the entries behind it wait for a reclaim
NOT_HANDLED = -2.0  # a bulk handler left the entry to the one-by-one path


def dependencies(lanes: Sequence[Lane]) -> list[list[int]]:
    """For each entry, the indexes of the earlier entries it must wait for."""
    last: dict[Lane, int] = {}
    below: dict[Lane, set[Lane]] = {}
    waits: list[list[int]] = []
    for index, lane in enumerate(lanes):
        ancestors = [lane[:k] for k in range(1, len(lane))]
        found = {last[a] for a in ancestors if a in last}
        if lane in last:
            found.add(last[lane])
        found.update(last[d] for d in below.get(lane, ()))
        waits.append(sorted(found))
        last[lane] = index
        for ancestor in ancestors:
            below.setdefault(ancestor, set()).add(lane)
    return waits
