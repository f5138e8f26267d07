"""Replay ccxt's static Kraken fixtures through the stand-in and report the differences.

    python -m bench.kraken_fixtures --ccxt-static DIR

DIR is a copy of ccxt's ts/src/test/static (request/kraken.json, response/kraken.json),
kept outside this repository: ccxt's recordings of Kraken are not part of mmops, and
the committed tests carry their own samples. Three checks:

1. requests: each request ccxt was recorded sending to Kraken (URL and form body) is
   sent to the stand-in, signed, with a fresh nonce; the answer is classified;
2. answers: for each recorded Kraken answer of an endpoint mmops uses (AddOrder,
   QueryOrders, OpenOrders, Ticker), the stand-in's answer to the same kind of request is
   compared path by path: keys missing or extra, and JSON types that differ;
3. parsing: both answers go through the real ccxt client's parser, and the unified
   fields each one fills are compared.

Exit status 1 when the stand-in lacks a key that Kraken sends, or when ccxt fills a
unified field from Kraken's answer that it cannot fill from the stand-in's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import ccxt.async_support as ccxt_async

from tests import fake_kraken_data as data
from tests.fake_kraken import FakeKraken
from tests.fake_kraken_data import PRO, pair_record
from tests.kraken_shapes import compare, shape
from trading.ccxt_exchange import rebase_urls

KEY = "fixtureREPLAYkey"
SECRET = base64.b64encode(b"fixture-replay-secret-0123456789").decode()

# the fixtures' pairs, added to this process's stand-in only
EXTRA_PAIRS = {
    "LTCUSDT": ("LTCUSDT", "LTC/USDT", "XLTC", "USDT", 2, "0.1", "60.00", "60.01"),
    "XLTCZUSD": ("LTCUSD", "LTC/USD", "XLTC", "ZUSD", 2, "0.1", "60.00", "60.01"),
    "XBTUSDT": ("XBTUSDT", "XBT/USDT", "XXBT", "USDT", 1, "0.00005", "64500.0", "64500.1"),
    "ETHUSDT": ("ETHUSDT", "ETH/USDT", "XETH", "USDT", 2, "0.002", "3300.00", "3300.01"),
}


def extend_stand_in(kraken: FakeKraken) -> None:
    for pid, (alt, ws, base, quote, pd, ordermin, bid, ask) in EXTRA_PAIRS.items():
        data.PAIRS[pid] = pair_record(
            alt,
            ws,
            base,
            quote,
            pair_decimals=pd,
            lot_decimals=8,
            cost_decimals=6,
            ordermin=ordermin,
            tick_size=str(Decimal(1).scaleb(-pd)),
            leverage=[2, 3],
        )
        kraken.books[pid] = (Decimal(bid), Decimal(ask))
    for asset, alt in (("XLTC", "LTC"), ("USDT", "USDT")):
        data.ASSETS[asset] = {
            "aclass": "currency",
            "altname": alt,
            "decimals": 10,
            "display_decimals": 5,
            "collateral_value": 1.0,
            "status": "enabled",
        }
        kraken.balances[asset] = Decimal(100_000)


class Client:
    """Raw signed requests to the stand-in, as ccxt sends them."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base
        self.nonce = int(time.time() * 1000)

    async def send(self, url: str, body: str | None = None) -> tuple[int, Any]:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if "/private/" not in parts.path:
            async with self.session.get(self.base + path) as response:
                return response.status, await self._json(response)
        self.nonce += 1
        fields = [(k, v) for k, v in parse_qsl(body or "", keep_blank_values=True) if k != "nonce"]
        nonce = str(self.nonce)
        encoded = urlencode([("nonce", nonce), *fields])
        digest = hashlib.sha256((nonce + encoded).encode()).digest()
        mac = hmac.new(base64.b64decode(SECRET), parts.path.encode() + digest, hashlib.sha512)
        headers = {
            "API-Key": KEY,
            "API-Sign": base64.b64encode(mac.digest()).decode(),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        async with self.session.post(self.base + parts.path, data=encoded, headers=headers) as r:
            return r.status, await self._json(r)

    @staticmethod
    async def _json(response: aiohttp.ClientResponse) -> Any:
        text = await response.text()
        try:
            return json.loads(text)
        except ValueError:
            return text


def classify(status: int, answer: Any) -> str:
    if status != 200 or not isinstance(answer, dict) or "error" not in answer:
        return f"BROKEN: HTTP {status} {str(answer)[:80]}"
    errors = answer["error"]
    if not errors:
        return "accepted"
    first = str(errors[0])
    if first == "EGeneral:Unknown method":
        return "endpoint not modelled"
    if first == "EGeneral:Invalid arguments:ordertype":
        return "order type not modelled"
    return f"refused: {first}"


async def replay_requests(client: Client, fixtures: dict[str, Any]) -> list[list[str]]:
    rows = []
    for method, cases in fixtures["methods"].items():
        for case in cases:
            status, answer = await client.send(case["url"], case.get("output"))
            endpoint = urlsplit(case["url"]).path.rsplit("/", 1)[-1]
            rows.append([method, case["description"][:40], endpoint, classify(status, answer)])
    return rows


# -- answers -----------------------------------------------------------------------------


async def stand_in_answers(client: Client, kraken: FakeKraken) -> dict[str, list[Any]]:
    """The stand-in's answers to requests like the recorded ones, per ccxt method."""
    add = "https://api.kraken.com/0/private/AddOrder"
    _, created = await client.send(
        add, "pair=LTCUSDT&type=buy&ordertype=limit&volume=0.2&price=55&oflags=post"
    )
    open_id = created["result"]["txid"][0]
    _, taker = await client.send(add, "pair=LTCUSDT&type=buy&ordertype=limit&volume=0.2&price=61")
    closed_id = taker["result"]["txid"][0]
    query = "https://api.kraken.com/0/private/QueryOrders"
    _, open_order = await client.send(query, f"trades=True&txid={open_id}")
    _, closed_order = await client.send(query, f"trades=True&txid={closed_id}")
    _, opened = await client.send("https://api.kraken.com/0/private/OpenOrders", "")
    _, ticker = await client.send("https://api.kraken.com/0/public/Ticker?pair=XBTUSDT")
    return {
        "createOrder": [created],
        "fetchOrder": [open_order, closed_order],
        "fetchOpenOrders": [opened],
        "fetchTicker": [ticker],
    }


async def compare_answers(
    client: Client, kraken: FakeKraken, fixtures: dict[str, Any], parser: Any
) -> tuple[list[list[str]], int]:
    mine = await stand_in_answers(client, kraken)
    rows, failures = [], 0
    for method, answers in mine.items():
        for n, case in enumerate(fixtures["methods"].get(method, [])):
            if case.get("disabled"):
                continue
            ours = answers[min(n, len(answers) - 1)]
            problems, notes = compare(shape(case["httpResponse"]), shape(ours))
            parsed = parse_gap(parser, method, case["httpResponse"], ours)
            failures += len(problems) + len(parsed)
            verdict = "same keys" if not problems else "; ".join(problems)
            rows.append([method, case["description"][:40], verdict, "; ".join(parsed) or "-"])
            rows.extend([["", "", f"note: {note}", ""] for note in notes])
    return rows, failures


def parse_gap(parser: Any, method: str, kraken: Any, stand_in: Any) -> list[str]:
    """Unified fields ccxt fills from Kraken's answer but not from the stand-in's."""

    def filled(answer: Any) -> set[str]:
        result = answer["result"]
        if method == "fetchTicker":
            (raw,) = result.values()
            return {k for k, v in parser.parse_ticker(raw).items() if v is not None}
        if method == "createOrder":
            return {k for k, v in parser.parse_order(result).items() if v not in (None, [])}
        orders = result.get("open", result)
        raw = next(iter(orders.values()))
        return {k for k, v in parser.parse_order(raw).items() if v not in (None, [])}

    # fields that depend on the order's type or on being executed, not on the shape
    depends = {"average", "cost", "fee", "fees", "trades", "lastUpdateTimestamp", "triggerPrice",
               "stopPrice", "takeProfitPrice", "stopLossPrice", "remaining", "filled", "price",
               "timeInForce", "postOnly", "type", "lastTradeTimestamp", "datetime", "timestamp",
               "high", "low", "open", "close", "last", "vwap", "change", "percentage",
               "previousClose", "baseVolume", "quoteVolume", "bidVolume", "askVolume"}  # fmt: skip
    return sorted(
        f"ccxt fills {f} only from Kraken's" for f in filled(kraken) - filled(stand_in) - depends
    )


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


async def main(static: Path) -> int:
    requests = json.loads((static / "request" / "kraken.json").read_text())
    responses = json.loads((static / "response" / "kraken.json").read_text())
    parser = ccxt_async.kraken({"timeout_on_exit": 0})
    async with FakeKraken(api_key=KEY, api_secret=SECRET, limits=PRO) as kraken:
        extend_stand_in(kraken)
        async with aiohttp.ClientSession() as session:
            client = Client(session, kraken.url)
            # ccxt's parser needs markets: it loads them from the stand-in itself
            parser.urls = {**parser.urls, "api": rebase_urls(parser.urls["api"], kraken.url)}
            await parser.load_markets()
            request_rows = await replay_requests(client, requests)
            answer_rows, failures = await compare_answers(client, kraken, responses, parser)
    await parser.close()
    broken = sum(row[3].startswith("BROKEN") for row in request_rows)
    print("1. ccxt's recorded requests, sent to the stand-in")
    print(table(["METHOD", "CASE", "ENDPOINT", "STAND-IN"], request_rows))
    print()
    print("2./3. Kraken's recorded answers against the stand-in's (shape; ccxt's parse)")
    print(table(["METHOD", "CASE", "SHAPE", "CCXT PARSE"], answer_rows))
    print()
    print(f"{len(request_rows)} requests ({broken} broken), {failures} answer differences")
    return 1 if broken or failures else 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--ccxt-static", type=Path, required=True, metavar="DIR")
    sys.exit(asyncio.run(main(cli.parse_args().ccxt_static)))
