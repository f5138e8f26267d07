"""Kraken's documented answer shapes (docs.kraken.com/api-reference), as samples written
for mmops — the values are made up, the keys and JSON types are Kraken's — and a shape
comparison used by the stand-in's tests and by bench/kraken_fixtures.py."""

from __future__ import annotations

from typing import Any

_DESCR = {
    "pair": "XBTUSD",
    "type": "sell",
    "ordertype": "limit",
    "price": "64600.0",
    "price2": "0",
    "leverage": "none",
    "order": "sell 0.01000000 XBTUSD @ limit 64600.0",
    "close": "",
}
OPEN_ORDER: dict[str, Any] = {
    "refid": None,
    "userref": None,
    "cl_ord_id": "6d6d6f70-1a2b-4c3d-8e4f-000000000001",
    "status": "open",
    "opentm": 1763700000.1234,
    "starttm": 0,
    "expiretm": 0,
    "descr": _DESCR,
    "vol": "0.01000000",
    "vol_exec": "0.00000000",
    "cost": "0.00000",
    "fee": "0.00000",
    "price": "0.0",
    "stopprice": "0.00000",
    "limitprice": "0.00000",
    "misc": "",
    "oflags": "post",
}
CLOSED_ORDER: dict[str, Any] = {
    **OPEN_ORDER,
    "status": "closed",
    "vol_exec": "0.01000000",
    "cost": "646.00000",
    "fee": "1.61500",
    "price": "64600.0",
    "reason": None,
    "closetm": 1763700042.5678,
}

SAMPLES: dict[str, dict[str, Any]] = {
    "AddOrder": {
        "error": [],
        "result": {"descr": {"order": _DESCR["order"]}, "txid": ["OUF4EM-FRGI2-MQMWZD"]},
    },
    "AddOrderBatch": {
        "error": [],
        "result": {
            "orders": [
                {"txid": "O5RJ4L-AXIBE-AB5GJD", "descr": {"order": _DESCR["order"]}},
                {"error": "EOrder:Insufficient funds", "descr": {"order": _DESCR["order"]}},
            ]
        },
    },
    "OpenOrders": {"error": [], "result": {"open": {"OQCLML-BW3P3-BUCMWZ": OPEN_ORDER}}},
    "ClosedOrders": {
        "error": [],
        "result": {"closed": {"OQCLML-BW3P3-BUCMWZ": CLOSED_ORDER}, "count": 1},
    },
    "QueryOrders": {
        "error": [],
        "result": {"OQCLML-BW3P3-BUCMWZ": {**OPEN_ORDER, "reason": None}},
    },
    "CancelOrder": {"error": [], "result": {"count": 1}},
    "Ticker": {
        "error": [],
        "result": {
            "XXBTZUSD": {
                "a": ["64585.00000", "1", "1.000"],
                "b": ["64584.80000", "2", "2.000"],
                "c": ["64584.90000", "0.00100000"],
                "v": ["1000.00000000", "2000.00000000"],
                "p": ["64584.90000", "64584.90000"],
                "t": [1000, 2000],
                "l": ["63939.00000", "63293.10000"],
                "h": ["65230.80000", "65876.70000"],
                "o": "64584.90000",
            }
        },
    },
}

ID_KEYED = {"result", "result.open", "result.closed"}  # dicts keyed by txid or pair id


def shape(value: Any, path: str = "") -> dict[str, str]:
    """path -> JSON type; txid/pair-keyed levels collapse to '*'; numeric text is 'str#'."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        out[path or "."] = "object"
        collapse = path in ID_KEYED and all(k.isupper() or "-" in k for k in value)
        for key, item in value.items():
            out.update(shape(item, f"{path}.{'*' if collapse else key}".lstrip(".")))
    elif isinstance(value, list):
        out[path] = "array"
        for item in value:
            out.update(shape(item, f"{path}[]"))
    elif isinstance(value, bool):
        out[path] = "bool"
    elif isinstance(value, int | float):
        out[path] = "number"
    elif value is None:
        out[path] = "null"
    else:
        text = str(value)
        numeric = text.replace(".", "", 1).lstrip("-").isdigit()
        out[path] = "str#" if numeric else "str"
    return out


def compare(kraken: dict[str, str], stand_in: dict[str, str]) -> tuple[list[str], list[str]]:
    """(keys Kraken sends that the stand-in lacks, notes on types and extra keys).

    null and a number are taken as one type (a field Kraken leaves null until it applies).
    """
    problems, notes = [], []
    for path, kind in sorted(kraken.items()):
        mine = stand_in.get(path)
        if mine is None:
            problems.append(f"missing {path} ({kind})")
        elif mine != kind and "null" not in {mine, kind}:
            notes.append(f"type of {path}: Kraken {kind}, stand-in {mine}")
    for path in sorted(set(stand_in) - set(kraken)):
        notes.append(f"extra {path} ({stand_in[path]})")
    return problems, notes
