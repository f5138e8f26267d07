"""What the workers need from their process, as Protocols (mmops.app.App provides them).

Workers sit below the composition root: they ask for these parts instead of importing
the app, so the layers run one way (see pyproject.toml, import-linter).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from base.clock import Clock
from base.settings import Settings
from storage.keys import Keys
from storage.redis import AnyRedis
from trading.book import PositionBook
from trading.exchange import Exchange
from trading.takeprofit import TakeProfitEngine


class Parts(Protocol):
    """Connections, names, time, the stop signal and alerts."""

    settings: Settings
    redis: AnyRedis
    keys: Keys
    clock: Clock
    stop: asyncio.Event

    async def alert(self, kind: str, message: str, **figures: object) -> None: ...


class TradingParts(Parts, Protocol):
    """Parts plus the exchange, the positions and the take-profit engine."""

    exchange: Exchange
    book: PositionBook
    engine: TakeProfitEngine
