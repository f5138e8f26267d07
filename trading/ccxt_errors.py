"""ccxt's errors as trading.exchange's classes, by the exchange's own error strings.

A Kraken answer carries its errors as strings, `EOrder:Insufficient funds`, in a JSON
envelope that ccxt puts verbatim into its exception message ("kraken {body}"). Each
string is looked up, in this order:
1. KRAKEN_ERRORS below: Kraken's documented strings that mmops must tell apart (the
   rate limit, the open-order cap, post-only, ... — several of which ccxt's table
   leaves out or lumps together);
2. ccxt's own exception table for the exchange (`client.exceptions['exact']`), its
   class mapped onto ours;
3. the same two with Kraken's trailing `:<extra info>` removed
   (`EOrder:Invalid price:XBTUSD price can only ...` -> `EOrder:Invalid price`);
4. ccxt's `broad` table (substrings), as ccxt itself does.
Only when no string is known does ccxt's exception class decide.

An `EOrder:` refusal that none of these knows is an UnrecognisedRefusal: Kraken does
not document the text it answers for a `cl_ord_id` that an open order already
carries, so the adapter checks that case by looking the client id up instead of
matching words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import ccxt

from base.logs import redact
from trading.exchange import (
    BadSymbol,
    ExchangeError,
    InsufficientFunds,
    OpenOrdersLimit,
    OrderNotFound,
    PermanentError,
    PostOnlyRejected,
    RateLimited,
    TransientError,
)


class UnrecognisedRefusal(PermanentError):
    """An order refusal (Kraken `EOrder:...`) with a text no table knows."""


# Kraken's documented error strings (docs.kraken.com, "Spot error messages") -> our class
KRAKEN_ERRORS: dict[str, type[ExchangeError]] = {
    "EOrder:Rate limit exceeded": RateLimited,  # the pair's trading counter
    "EAPI:Rate limit exceeded": RateLimited,  # the key's API counter
    "EOrder:Orders limit exceeded": OpenOrdersLimit,
    "EOrder:Post only order": PostOnlyRejected,
    "EOrder:Insufficient funds": InsufficientFunds,
    "EOrder:Unknown order": OrderNotFound,
    "EOrder:Order minimum not met": PermanentError,
    "EOrder:Cost minimum not met": PermanentError,
    "EOrder:Tick size check failed": PermanentError,
    "EOrder:Invalid price": PermanentError,
    "EOrder:Invalid order": PermanentError,
    "EOrder:Positions limit exceeded": PermanentError,
    "EOrder:Scheduled orders limit exceeded": PermanentError,
    "EGeneral:Invalid arguments": PermanentError,
    "EGeneral:Permission denied": PermanentError,
    "EAPI:Invalid key": PermanentError,
    "EAPI:Invalid signature": PermanentError,
    "EQuery:Unknown asset pair": BadSymbol,
    "EQuery:Invalid asset pair": BadSymbol,
    "EAPI:Invalid nonce": TransientError,
    "EGeneral:Too many requests": TransientError,
    "EGeneral:Temporary lockout": TransientError,
    "EGeneral:Internal error": TransientError,
    "EDatabase:Internal error": TransientError,
    "EService:Unavailable": TransientError,
    "EService:Busy": TransientError,
    "EService:Deadline elapsed": TransientError,
    "EService:Market in cancel_only mode": TransientError,
    "EService:Market in post_only mode": TransientError,
}

# the fallback when an answer is not JSON: anything shaped like a Kraken error string
_KRAKEN_ERROR = re.compile(
    r"\b[EW](?:General|API|Query|Order|Trade|Funding|Service|Auth|Database|Session|Account|Budget)"
    r":[^\"'\[\],}]*"
)
# ccxt's message for an HTTP error status: "<id> <METHOD> <url> <status> <reason> <body>".
_HTTP_STATUS = re.compile(r"\b(?:GET|POST|PUT|DELETE) \S+ ([1-5]\d\d)\b")


def _from_ccxt_class(cls: type[BaseException]) -> type[ExchangeError]:
    """ccxt's exception class (from its table or raised) as ours."""
    if issubclass(cls, ccxt.NetworkError | ccxt.CancelPending):
        return TransientError  # timeouts, maintenance, DDoS protection, nonce
    if issubclass(cls, ccxt.InsufficientFunds):
        return InsufficientFunds
    if issubclass(cls, ccxt.OrderImmediatelyFillable):
        return PostOnlyRejected
    if issubclass(cls, ccxt.BadSymbol):
        return BadSymbol
    if issubclass(cls, ccxt.OrderNotFound):
        return OrderNotFound
    return PermanentError


class ErrorTranslator:
    """Turns one exchange's ccxt exceptions and error strings into ours (module doc)."""

    def __init__(self, name: str, ccxt_exceptions: Mapping[str, Any], secrets: tuple[str, ...]):
        self.name = name
        self._exact: Mapping[str, type[BaseException]] = ccxt_exceptions.get("exact") or {}
        self._broad: Mapping[str, type[BaseException]] = ccxt_exceptions.get("broad") or {}
        self._secrets = secrets

    def scrub(self, text: str) -> str:
        """The text without the exchange's credentials nor any secret the process knows."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return " ".join(redact(text).split())[:500]

    # -- the exchange's error strings -----------------------------------------------------

    def body(self, exc: BaseException) -> dict[str, Any] | None:
        """The JSON answer ccxt put into its message ("<id> {...}"), if there is one."""
        text = str(exc)
        head = f"{self.name} "
        if not text.startswith(head + "{"):
            return None
        try:
            parsed = json.loads(text[len(head) :])
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    def codes(self, exc: BaseException) -> list[str]:
        """The exchange's error strings in a ccxt exception, in the answer's order."""
        body = self.body(exc)
        if body is not None:
            found = [str(e) for e in body.get("error") or []]
            result = body.get("result")
            orders = result.get("orders") if isinstance(result, dict) else None
            for order in orders if isinstance(orders, list) else []:
                if isinstance(order, dict) and order.get("error"):
                    found.append(str(order["error"]))
            return found
        return [c.strip() for c in _KRAKEN_ERROR.findall(str(exc))]

    def kind(self, code: str) -> type[ExchangeError] | None:
        """Our class for one error string (steps 1-4 of the module docstring), or None."""
        candidate = code.strip()
        while True:
            if candidate in KRAKEN_ERRORS:
                return KRAKEN_ERRORS[candidate]
            if candidate in self._exact:
                return _from_ccxt_class(self._exact[candidate])
            head, sep, _ = candidate.rpartition(":")
            if not sep or ":" not in head:
                break
            candidate = head  # drop Kraken's ":<extra info>"
        for fragment, cls in self._broad.items():
            if fragment in code:
                return _from_ccxt_class(cls)
        return None

    # -- building our errors --------------------------------------------------------------

    def from_code(
        self, what: str, code: str, *, symbol: str | None = None, lookup: bool = False
    ) -> ExchangeError:
        """One error string (e.g. one order's error in a batch answer) as our exception."""
        return self._build(what, [code], f"{code}", symbol=symbol, lookup=lookup, exc=None)

    def translate(
        self, what: str, exc: BaseException, *, symbol: str | None = None, lookup: bool = False
    ) -> ExchangeError:
        """A ccxt exception as ours, with a one-line secrets-free message."""
        text = str(exc)
        codes = self.codes(exc)
        detail = type(exc).__name__
        status = _HTTP_STATUS.search(text)
        if status:
            detail += f" HTTP {status.group(1)}"
        if codes:
            detail += f" {'; '.join(codes)}"
        return self._build(what, codes, detail, symbol=symbol, lookup=lookup, exc=exc)

    def _build(
        self,
        what: str,
        codes: list[str],
        detail: str,
        *,
        symbol: str | None,
        lookup: bool,
        exc: BaseException | None,
    ) -> ExchangeError:
        message = self.scrub(f"{self.name} {what}: {detail}")
        kind: type[ExchangeError] | None = None
        for code in codes:
            kind = self.kind(code)
            if kind is not None:
                break
        if kind is None and exc is not None:
            if isinstance(exc, ccxt.ExchangeError) and isinstance(
                exc.__cause__, aiohttp.ClientError
            ):
                kind = TransientError  # e.g. a truncated response body
            elif isinstance(exc, ccxt.BaseError):
                kind = _from_ccxt_class(type(exc))
                if kind is PermanentError and any(c.startswith("EOrder:") for c in codes):
                    kind = UnrecognisedRefusal
        if kind is None:
            unknown_order_refusal = any(c.startswith("EOrder:") for c in codes)
            kind = UnrecognisedRefusal if unknown_order_refusal else PermanentError
        if (
            lookup
            and kind is PermanentError
            and any(c.startswith("EOrder:Invalid order") for c in codes)
        ):
            kind = OrderNotFound  # QueryOrders' answer for an id it does not know
        if kind is RateLimited:
            # the pair's trading counter (EOrder) names the pair; the key's API counter does not
            per_pair = any(c.startswith("EOrder:") for c in codes)
            return RateLimited(message, symbol=symbol if per_pair else None)
        return kind(message)
