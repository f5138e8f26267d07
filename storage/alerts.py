"""Writing to `mm:alerts` (docs/contract.md §2): one entry per alert, kind, message, figures."""

from __future__ import annotations

from storage.keys import Keys
from storage.redis import AnyRedis


def alert_fields(
    kind: str, message: str, now_ms: int, figures: dict[str, object]
) -> dict[str, str]:
    fields = {"kind": kind, "message": message, "ts": str(now_ms)}
    fields.update({k: str(v) for k, v in figures.items()})
    return fields


async def write_alert(
    redis: AnyRedis, keys: Keys, now_ms: int, kind: str, message: str, **figures: object
) -> None:
    """Append one alert (the webhook forwarder picks it up from the stream)."""
    await redis.xadd(keys.alerts, alert_fields(kind, message, now_ms, figures))  # type: ignore[arg-type]
