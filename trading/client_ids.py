"""Deterministic client order ids: one per (session, position, coverage step).

A UUID (Kraken's `cl_ord_id` accepts the UUID form) derived with uuid5, whose first
four bytes are the marker "mmop", so orders mmops placed are recognisable on the
exchange (PREFIX) and a retry or replay of a step always sends the same id.
"""

from __future__ import annotations

import hashlib
import uuid

_NAMESPACE = uuid.UUID("1c6a5d9e-7f43-4a52-9d0e-6d6d6f707331")
PREFIX = "6d6d6f70-"

# uuid5 is SHA-1 over the namespace's bytes then the name: the namespace is hashed once
# here and the state copied per id (`uuid.uuid5(_NAMESPACE, name)`'s bytes, exactly)
_HASHED_NAMESPACE = hashlib.sha1(_NAMESPACE.bytes, usedforsecurity=False)


def client_id(session_id: str, position_id: str, step: int) -> str:
    sha = _HASHED_NAMESPACE.copy()
    sha.update(f"{session_id}/{position_id}/{step}".encode())
    digest = sha.digest()
    # the "mmop" marker, then uuid5's version (5) and RFC 4122 variant bits
    raw = b"mmop" + digest[4:6] + bytes((digest[6] & 0x0F | 0x50,)) + digest[7:8]
    raw += bytes((digest[8] & 0x3F | 0x80,)) + digest[9:16]
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_ours(client_order_id: str | None) -> bool:
    return bool(client_order_id) and str(client_order_id).startswith(PREFIX)
