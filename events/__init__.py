"""The wire contract of the input stream: event types and their codec."""

from events.codec import EventError, decode, encode
from events.schema import Event, Fill, Order, SessionEnded, SessionStarted

__all__ = [
    "Event",
    "EventError",
    "Fill",
    "Order",
    "SessionEnded",
    "SessionStarted",
    "decode",
    "encode",
]
