"""One setting's text made into its value, or one line naming the setting and what it expects."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

T = TypeVar("T")

KRAKEN_TIERS = ("starter", "intermediate", "pro")


class SettingsError(ValueError):
    """One bad setting; str() is the one-line message for the operator."""


def parse_balances(name: str, raw: str) -> dict[str, Decimal]:
    """'BTC=1.5,USD=100000' -> {'BTC': Decimal('1.5'), 'USD': Decimal('100000')}."""
    out: dict[str, Decimal] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        asset, sep, amount = item.partition("=")
        value = _decimal(name, amount) if sep else None
        if not asset or value is None or value < 0:
            raise SettingsError(
                f"{name}: expected ASSET=AMOUNT,... with amounts >= 0, got {item!r}"
            )
        out[asset.strip()] = value
    return out


# PAPER_FAULTS kinds by the paper exchange calls they hit (trading/paper/faults.py). One
# draw per call picks at most one kind, so the kinds of one call add up to at most 1.
PAPER_FAULT_CALLS: Mapping[str, tuple[str, ...]] = {
    "place": ("rate_limit", "place_5xx", "place_timeout", "post_only", "lost_response"),
    "cancel": ("rate_limit", "cancel_5xx"),
    "fetch": ("rate_limit", "fetch_5xx"),
}
PAPER_FAULT_KINDS = tuple(dict.fromkeys(k for kinds in PAPER_FAULT_CALLS.values() for k in kinds))


def parse_paper_faults(name: str, raw: str) -> tuple[tuple[str, float], ...]:
    """'place_5xx=0.02,post_only=0.01' -> (('place_5xx', 0.02), ('post_only', 0.01))."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        kind, sep, text = (part.strip() for part in item.partition("="))
        try:
            value = Decimal(text) if sep else None
        except InvalidOperation:
            value = None
        if value is not None and not value.is_finite():
            value = None
        if kind not in PAPER_FAULT_KINDS or value is None or not Decimal(0) <= value <= 1:
            raise SettingsError(
                f"{name}: expected KIND=PROBABILITY,... with probabilities from 0 to 1 and kinds "
                f"{' '.join(PAPER_FAULT_KINDS)}, got {item[:60]!r}"
            )
        out[kind] = float(value)
    faults = tuple(out.items())
    check_paper_faults(name, faults)
    return faults


def check_paper_faults(name: str, faults: tuple[tuple[str, float], ...]) -> None:
    table = dict(faults)
    for kind, value in table.items():
        if kind not in PAPER_FAULT_KINDS or not 0 <= value <= 1:
            raise SettingsError(f"{name}: {kind}={value} is not a known kind with 0 <= p <= 1")
    for call, kinds in PAPER_FAULT_CALLS.items():
        if sum(table.get(kind, 0.0) for kind in kinds) > 1:
            raise SettingsError(
                f"{name}: the kinds of one {call} call ({' + '.join(kinds)}) add up to more than 1"
            )


def _str(name: str, raw: str) -> str:
    return raw


def _bool(name: str, raw: str) -> bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _decimal(name: str, raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if not value.is_finite():
        raise SettingsError(f"{name}: expected a finite number, got {raw!r}")
    return value


def _bounded(parse: Callable[[str, str], T], low: Any, what: str) -> Callable[[str, str], T]:
    def check(name: str, raw: str) -> T:
        value = parse(name, raw)
        if value < low or (low == 0 and what == "> 0" and value == 0):
            raise SettingsError(f"{name}: expected a number {what}, got {raw!r}")
        return value

    return check


def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from None


def _port(name: str, raw: str) -> int:
    value = _int(name, raw)
    if not 0 <= value <= 65535:
        raise SettingsError(f"{name}: expected a port from 0 to 65535, got {raw!r}")
    return value


def _level(name: str, raw: str) -> str:
    value = raw.upper()
    return "WARN" if value == "WARNING" else value


def _tier(name: str, raw: str) -> str:
    value = raw.lower()
    if value not in KRAKEN_TIERS:
        raise SettingsError(f"{name}: expected one of {' '.join(KRAKEN_TIERS)}, got {raw!r}")
    return value


def _percent_below_100(name: str, raw: str) -> Decimal:
    value = _decimal(name, raw)
    if not Decimal(0) <= value < 100:
        raise SettingsError(f"{name}: expected a percentage from 0 to below 100, got {raw!r}")
    return value


_positive_int = _bounded(_int, 1, ">= 1")
_positive_decimal = _bounded(_decimal, 0, "> 0")
_non_negative_decimal = _bounded(_decimal, 0, ">= 0")
