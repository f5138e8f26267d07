"""Structured logs: one JSON object per line on stderr, with a TRACE level below DEBUG.

Secrets never reach a log line (docs/contract.md §5): `protect()` registers the secret
values of the settings (Settings.secrets(): the exchange's key and secret, URL
passwords, the webhook's token), and the formatter replaces every one of them by `***`
in the finished line, whatever carried it there (the message, its arguments, an
`extra` field, an exception's text). The CLI passes its error lines through `redact()`.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
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


MASK = "***"


class Redactor:
    """Replaces every registered secret in a text by ***, in the forms a line may show it:
    as it is or repr()-escaped (a message built with !r, an exception's repr), each also
    JSON-escaped (inside a log line)."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, secrets: Iterable[str]) -> None:
        forms = set(self._secrets)
        for secret in secrets:
            if secret:
                for shown in (secret, repr(secret)[1:-1]):  # as it is, and inside a repr()
                    forms |= {shown, orjson.dumps(shown).decode()[1:-1]}  # and in a JSON line
        if forms != self._secrets:
            self._secrets = forms
            # longest first, so a secret that contains another is masked whole
            ordered = sorted(forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered)))

    def clear(self) -> None:
        self._secrets, self._pattern = set(), None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text


REDACT = Redactor()  # the process's secrets


def protect(secrets: Iterable[str]) -> None:
    """Register secret values: from now on no log line and no redact()ed text shows them."""
    REDACT.add(secrets)


def redact(text: str) -> str:
    """`text` with every registered secret replaced by ***."""
    return REDACT(text)


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
        return REDACT(orjson.dumps(entry, default=str).decode())


def setup(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Route every logger to one JSON-lines handler on stderr at `level`; `secrets` are
    never shown (see protect)."""
    protect(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    for noisy in ("asyncio", "ccxt", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line for messages and logs (never a traceback, never a
    registered secret)."""
    lines = str(exc).splitlines()
    return REDACT(lines[0] if lines else type(exc).__name__)[:limit]


def get(name: str) -> logging.Logger:
    return logging.getLogger(name)
