"""Writing to `mm:alerts` (docs/contract.md §2): one entry per alert, kind, message, figures.

The stream is capped (`XADD MAXLEN ~ ALERTS_MAXLEN`, docs/contract.md §3 Retention): every
writer of an alert goes through `write_alert` (or passes `maxlen` to its own XADD)."""

from __future__ import annotations

from base.logs import redact
from base.settings import Settings
from storage.keys import Keys
from storage.redis import AnyRedis

ALERTS_MAXLEN: int = Settings().alerts_maxlen  # the default; processes pass the setting


def alert_fields(
    kind: str, message: str, now_ms: int, figures: dict[str, object]
) -> dict[str, str]:
    """The entry's fields; no secret in them (an alert may be POSTed to a chat)."""
    fields = {"kind": kind, "message": redact(message), "ts": str(now_ms)}
    fields.update({k: redact(str(v)) for k, v in figures.items()})
    return fields


async def write_alert(
    redis: AnyRedis,
    keys: Keys,
    now_ms: int,
    kind: str,
    message: str,
    *,
    maxlen: int = ALERTS_MAXLEN,
    **figures: object,
) -> None:
    """Append one alert (the webhook forwarder picks it up from the stream), capped."""
    await redis.xadd(
        keys.alerts,
        alert_fields(kind, message, now_ms, figures),  # type: ignore[arg-type]
        maxlen=maxlen,
        approximate=True,
    )
