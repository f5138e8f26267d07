"""Deterministic client order ids: one per (session, position, coverage step).

A UUID (Kraken's `cl_ord_id` accepts the UUID form) derived with uuid5, whose first
four bytes are the marker "mmop", so orders mmops placed are recognisable on the
exchange (PREFIX) and a retry or replay of a step always sends the same id.
"""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("1c6a5d9e-7f43-4a52-9d0e-6d6d6f707331")
PREFIX = "6d6d6f70-"


def client_id(session_id: str, position_id: str, step: int) -> str:
    raw = bytearray(uuid.uuid5(_NAMESPACE, f"{session_id}/{position_id}/{step}").bytes)
    raw[0:4] = b"mmop"
    return str(uuid.UUID(bytes=bytes(raw)))


def is_ours(client_order_id: str | None) -> bool:
    return bool(client_order_id) and str(client_order_id).startswith(PREFIX)
