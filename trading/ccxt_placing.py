"""Placing limit sells through ccxt without ever placing one twice, one by one or in batches.

Requests are grouped by pair. A pair's 2-15 orders go out in one AddOrderBatch (ccxt
`create_orders`); more are split into near-equal chunks of at most 15; a lone order
uses AddOrder (`create_order`). Kraken answers a batch per order, in the order sent:
an order's error is that request's error. ccxt raises for the whole call when any
order failed, with Kraken's answer in its message; the answer is read back from there,
so the orders that were accepted are never mistaken for refused ones.

The no-duplicate rules are the same for one order and for a batch:
- an unknown outcome (timeout, 5xx) is resolved per client id, open and closed orders
  alike, before anything is sent again; only the requests not found are re-sent;
- a refusal after an unknown try may mean that try reached the exchange (our own order
  now holds the funds, or carries the client id): the client id is looked up, and an
  order found is the request's result;
- an `EOrder:` refusal no table knows is checked against the open orders: an open
  order with our client id makes it a DuplicateClientId (Kraken does not document
  that text);
- no request is sent later than the host's `worst_call_ms` after the call began.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import ccxt

from trading.ccxt_convert import to_order
from trading.ccxt_errors import ErrorTranslator, UnrecognisedRefusal
from trading.exchange import (
    CircuitOpen,
    DuplicateClientId,
    ExchangeError,
    Market,
    Order,
    PermanentError,
    RateLimited,
    SellRequest,
    TransientError,
)

T = TypeVar("T")

BATCH_MAX = 15  # Kraken's AddOrderBatch takes 2 to 15 orders of one pair

Outcome = Order | ExchangeError


class OutOfTime(TransientError):
    """A place request was not sent, or was cut, at the call's deadline (outcome unknown)."""


class Host(Protocol):
    """What the placer needs from CcxtExchange."""

    name: str

    @property
    def client(self) -> Any: ...
    @property
    def errors(self) -> ErrorTranslator: ...
    @property
    def max_tries(self) -> int: ...
    @property
    def worst_call_ms(self) -> int: ...

    async def market(self, symbol: str) -> Market: ...
    async def once(
        self,
        what: str,
        fn: Callable[[], Awaitable[T]],
        *,
        lookup: bool = False,
        symbol: str | None = None,
        deadline: float | None = None,
    ) -> T: ...
    async def backoff(self, attempt: int, what: str, error: Exception) -> None: ...
    def gave_up(self, last: Exception | None) -> TransientError: ...
    async def rate_limited(self, exc: RateLimited) -> None: ...
    async def find_by_client_id(
        self, symbol: str, client_id: str, *, closed: bool = True
    ) -> Order | None: ...
    def wire_values(
        self, what: str, symbol: str, amount: Decimal, price: Decimal
    ) -> tuple[str, str]: ...


def chunks(items: Sequence[T], size: int = BATCH_MAX) -> list[list[T]]:
    """Near-equal chunks of at most `size` (16 -> 8 + 8, not 15 + a lone 1)."""
    if not items:
        return []
    count = math.ceil(len(items) / size)
    per = math.ceil(len(items) / count)
    return [list(items[i : i + per]) for i in range(0, len(items), per)]


def _what(request: SellRequest) -> str:
    return f"place_limit_sell {request.symbol} {request.client_id}"


class Placer:
    def __init__(self, host: Host) -> None:
        self._host = host

    async def place_many(self, requests: Sequence[SellRequest]) -> list[Outcome]:
        """Per request (same order), the order placed or the error it met."""
        out: list[Outcome | None] = [None] * len(requests)
        by_symbol: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            by_symbol.setdefault(request.symbol, []).append(i)
        # one pair after the other: Kraken wants each key's nonces to arrive in order
        for symbol, indexes in by_symbol.items():
            for chunk in chunks(indexes):
                outcomes = await self._place_chunk(symbol, [requests[i] for i in chunk])
                for i, outcome in zip(chunk, outcomes, strict=True):
                    out[i] = outcome
        return [o for o in out if o is not None]

    async def _place_chunk(self, symbol: str, requests: list[SellRequest]) -> list[Outcome]:
        host = self._host
        out: list[Outcome | None] = [None] * len(requests)
        try:
            await host.market(symbol)
        except ExchangeError as exc:
            return [exc] * len(requests)
        wires: dict[int, tuple[str, str]] = {}
        for i, r in enumerate(requests):
            try:
                wires[i] = host.wire_values(_what(r), symbol, r.amount, r.price)
            except ExchangeError as exc:
                out[i] = exc
        pending = [i for i in range(len(requests)) if out[i] is None]
        deadline = time.monotonic() + host.worst_call_ms / 1000
        last: TransientError | None = None
        for attempt in range(1, host.max_tries + 1):
            if not pending:
                break
            try:
                if attempt > 1:
                    pending = await self._resolve(symbol, requests, pending, out)
                    if not pending:
                        break
                answers = await self._send_once(symbol, requests, pending, wires, deadline)
            except (CircuitOpen, OutOfTime, RateLimited) as exc:
                last = exc
                break
            except TransientError as exc:
                last = exc
                if attempt < host.max_tries:
                    await host.backoff(attempt, self._what_many(symbol, requests, pending), exc)
                continue
            except PermanentError as exc:  # the exchange refused the whole request
                answers = [exc] * len(pending)
            for i, answer in zip(pending, answers, strict=True):
                out[i] = await self._settle(symbol, requests[i], answer, attempt)
            pending = []
        for i in pending:
            if isinstance(last, CircuitOpen | OutOfTime | RateLimited):
                out[i] = last
            else:
                out[i] = host.gave_up(last)
        return [o for o in out if o is not None]

    async def _resolve(
        self,
        symbol: str,
        requests: list[SellRequest],
        pending: list[int],
        out: list[Outcome | None],
    ) -> list[int]:
        """Before a re-send: adopt what an unknown try did place; the rest is still pending."""
        host = self._host
        still = []
        for i in pending:
            client_id = requests[i].client_id

            async def look_up(client_id: str = client_id) -> Order | None:
                return await host.find_by_client_id(symbol, client_id)

            found = await host.once(f"fetch_order_by_client_id {symbol} {client_id}", look_up)
            if found is None:
                still.append(i)
            else:
                out[i] = found
        return still

    async def _settle(
        self, symbol: str, request: SellRequest, answer: Outcome, attempt: int
    ) -> Outcome:
        """One request's answer, with the look-ups of the module docstring's rules."""
        if isinstance(answer, Order):
            return answer
        host = self._host
        if isinstance(answer, RateLimited):
            await host.rate_limited(answer)
            return answer
        if not isinstance(answer, PermanentError):
            return answer
        first = attempt == 1
        if first and not isinstance(answer, UnrecognisedRefusal):
            return answer
        try:
            found = await host.once(
                f"fetch_order_by_client_id {symbol} {request.client_id}",
                lambda: host.find_by_client_id(symbol, request.client_id, closed=not first),
            )
        except TransientError:
            return answer
        if found is None:
            return answer
        if first:  # an open order already carries the client id
            return DuplicateClientId(f"{answer} (an open order carries this client id)")
        return found

    async def _send_once(
        self,
        symbol: str,
        requests: list[SellRequest],
        pending: list[int],
        wires: dict[int, tuple[str, str]],
        deadline: float,
    ) -> list[Outcome]:
        host = self._host
        batch = [(requests[i], wires[i]) for i in pending]
        what = self._what_many(symbol, requests, pending)
        return await host.once(
            what, lambda: self._send(symbol, batch), symbol=symbol, deadline=deadline
        )

    async def _send(
        self, symbol: str, batch: list[tuple[SellRequest, tuple[str, str]]]
    ) -> list[Outcome]:
        """One AddOrder (a lone order) or one AddOrderBatch; raises for a whole refusal."""
        client = self._host.client
        if len(batch) == 1:
            request, (amount_s, price_s) = batch[0]
            raw = await client.create_order(
                symbol, "limit", "sell", amount_s, price_s, _params(request)
            )
            # Kraken's AddOrder answer has no client id, status or fill: fill in what we sent.
            return [_placed(raw, request)]
        orders = [
            {
                "symbol": symbol,
                "type": "limit",
                "side": "sell",
                "amount": amount_s,
                "price": price_s,
                "params": _params(request),
            }
            for request, (amount_s, price_s) in batch
        ]
        try:
            raws = await client.create_orders(orders)
        except ccxt.BaseError as exc:
            per_order = self._per_order(symbol, batch, exc)
            if per_order is None:
                raise
            return per_order
        if len(raws) != len(batch):
            raise TransientError(
                f"{self._host.name} AddOrderBatch {symbol}: {len(raws)} answers "
                f"for {len(batch)} orders"
            )
        return [_placed(raw, request) for raw, (request, _) in zip(raws, batch, strict=True)]

    def _per_order(
        self, symbol: str, batch: list[tuple[SellRequest, tuple[str, str]]], exc: BaseException
    ) -> list[Outcome] | None:
        """Kraken's per-order answers of a batch that ccxt raised for, or None (whole refusal)."""
        body = self._host.errors.body(exc)
        if body is None or body.get("error"):
            return None
        result = body.get("result")
        answers = result.get("orders") if isinstance(result, dict) else None
        if not isinstance(answers, list) or len(answers) != len(batch):
            return None
        out: list[Outcome] = []
        for answer, (request, _) in zip(answers, batch, strict=True):
            error = answer.get("error") if isinstance(answer, dict) else "no answer"
            txid = answer.get("txid") if isinstance(answer, dict) else None
            if isinstance(txid, list):
                txid = txid[0] if txid else None
            if error or not txid:
                code = str(error or "no txid in the answer")
                out.append(self._host.errors.from_code(_what(request), code, symbol=symbol))
            else:
                out.append(_placed({"id": txid}, request))
        return out

    @staticmethod
    def _what_many(symbol: str, requests: list[SellRequest], pending: list[int]) -> str:
        if len(pending) == 1:
            return _what(requests[pending[0]])
        return f"place_limit_sells {symbol} x{len(pending)}"


def _params(request: SellRequest) -> dict[str, Any]:
    params: dict[str, Any] = {"clientOrderId": request.client_id}
    if request.post_only:
        params["postOnly"] = True
    return params


def _placed(raw: dict[str, Any], request: SellRequest) -> Order:
    return to_order(
        raw,
        client_id=request.client_id,
        symbol=request.symbol,
        side="sell",
        price=request.price,
        amount=request.amount,
    )
