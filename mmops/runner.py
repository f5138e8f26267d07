"""Run an async entry point on uvloop (when installed) with settings and logging set up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from base import logs
from base.settings import Settings

T = TypeVar("T")


def run(main: Callable[[Settings], Awaitable[T]], **overrides: Any) -> T:
    settings = Settings.from_env(None, **overrides)
    logs.setup(settings.log_level, settings.secrets())
    try:
        import uvloop

        return uvloop.run(main(settings))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        return asyncio.run(main(settings))  # type: ignore[arg-type]
