"""Structured logs: one JSON object per line on stderr, with a TRACE level below DEBUG."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
_LEVELS = {
    "TRACE": TRACE,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
}
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": "WARN" if record.levelname == "WARNING" else record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["error"] = repr(record.exc_info[1])
        return orjson.dumps(entry, default=str).decode()


def setup(level: str = "INFO") -> None:
    """Route every logger to one JSON-lines handler on stderr at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    for noisy in ("asyncio", "ccxt", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line for messages and logs (never a traceback)."""
    lines = str(exc).splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def get(name: str) -> logging.Logger:
    return logging.getLogger(name)
