"""Where a migration's rows go, and on which path: the writer's tables or a dry run's discard."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, Sequence
from typing import Protocol


class Mode(enum.StrEnum):
    FAST = "fast"  # nothing stored yet: de-duplicate in memory, COPY into the tables
    STAGING = "staging"  # a re-run: PostgreSQL de-duplicates, totals come from the tables
    DRY = "dry"  # nothing written: exact de-duplication in memory


class Sink(Protocol):
    """Where a migration's COPY streams go: storage.session_writer.SessionWriter, or Discard."""

    async def copy(
        self, table: str, columns: Sequence[str], source: AsyncIterable[bytes]
    ) -> None: ...

    async def insert_fills(self, source: AsyncIterable[bytes]) -> list[str]: ...


class Discard:
    """A dry run's sink: consumes the rows, writes nothing."""

    async def copy(self, table: str, columns: Sequence[str], source: AsyncIterable[bytes]) -> None:
        async for _ in source:
            pass

    async def insert_fills(self, source: AsyncIterable[bytes]) -> list[str]:
        raise AssertionError("a dry run de-duplicates exactly: it has no fills to check")
