"""bench/hostile.py's entries against the codec: each kind is rejected for the one thing it
breaks (docs/contract.md §1), and the events it is built on are valid."""

from __future__ import annotations

import random
from decimal import Context, Decimal, localcontext

import pytest

from bench.hostile import HUGE, KINDS, hostile_entries, hostile_entry, valid_entry
from events import EventError, Fill, decode
from events.codec import MAX_ENTRY_BYTES

# each kind's reason, whatever field it lands on (ts and fills are integers, not decimals)
REASONS: dict[str, tuple[str, ...]] = {
    "unknown_type": ("unknown event type",),
    "wrong_value_type": ("not a decimal number", "non-negative integer", "expected", "BASE/QUOTE"),
    "missing_field": ("missing",),
    "repeated_field": ("repeated field",),
    "extra_fields": ("unknown field for a",),
    "nan": ("not a finite decimal", "non-negative integer"),
    "infinity": ("not a finite decimal", "non-negative integer"),
    "exponent_1e1000": ("out of range", "non-negative integer"),
    "exponent_beyond_decimal": ("out of range", "non-negative integer"),
    "negative": ("must be > 0", "must be >= 0", "non-negative integer"),
    "underscore": ("not a decimal number", "non-negative integer"),
    "blanks": ("not a decimal number", "non-negative integer"),
    "non_ascii_digits": ("not a decimal number", "non-negative integer"),
    "id_blank": ("expected 1-64 characters",),
    "id_65_plus": ("expected 1-64 characters",),
    "value_100kb": (f"entry larger than {MAX_ENTRY_BYTES} bytes",),
    HUGE: (f"entry larger than {MAX_ENTRY_BYTES} bytes",),
    "binary_junk": ("not valid UTF-8",),
}


def test_every_kind_has_its_reason() -> None:
    assert set(REASONS) == set(KINDS)


def test_the_events_under_the_hostile_ones_are_valid() -> None:
    rng = random.Random(1)
    for _ in range(500):
        decode(valid_entry(rng))


@pytest.mark.parametrize("kind", [k for k in KINDS if k != HUGE])
def test_each_kind_is_rejected_for_its_one_fault(kind: str) -> None:
    rng = random.Random(kind)
    for _ in range(200):
        pairs = hostile_entry(rng, kind)
        with pytest.raises(EventError) as caught:
            decode(pairs)
        message = str(caught.value)
        assert any(fragment in message for fragment in REASONS[kind]), (pairs[:12], message)
        assert "\n" not in message and len(message) < 200


def test_a_10_mb_value_is_rejected_for_its_size() -> None:
    pairs = hostile_entry(random.Random(3), HUGE)
    assert max(len(v) for _, v in pairs) == 10_000_000
    with pytest.raises(EventError, match=f"entry larger than {MAX_ENTRY_BYTES} bytes"):
        decode(pairs)


def test_a_repeated_field_hides_behind_a_dict() -> None:
    """The last value of the repeated name is valid: a reader that kept a dict (redis-py's
    XREADGROUP reply) would take the entry for a valid event; the raw pairs do not."""
    rng = random.Random(5)
    for _ in range(100):
        pairs = hostile_entry(rng, "repeated_field")
        names = [name for name, _ in pairs]
        assert len(names) == len(set(names)) + 1
        decode(dict(pairs))
        with pytest.raises(EventError, match="repeated field"):
            decode(pairs)


def test_the_mix_has_every_kind_and_few_huge_values() -> None:
    entries = hostile_entries(random.Random(7), 400, max_huge=1)
    assert len(entries) == 400
    kinds = [kind for kind, _ in entries]
    assert set(kinds) == set(KINDS)
    assert kinds.count(HUGE) == 1
    assert sum(len(v) >= 10_000_000 for _, pairs in entries for _, v in pairs) == 1


# --- the codec fix the fuzzing found -------------------------------------------------------
FILL = dict(valid_entry(random.Random(9), "fill"))


@pytest.mark.parametrize(
    "raw", ["1E+99999999999999999999", "1E-99999999999999999999", "7.5E+999999999999999999999"]
)
def test_an_exponent_beyond_decimal_is_out_of_range_not_a_crash(raw: str) -> None:
    """Decimal cannot hold these: its construction raised InvalidOperation, which the runtime
    does not catch (it dead-letters EventError) — the worker died on one entry."""
    for context in (None, Context(traps=[])):  # whatever the caller's context
        with localcontext(context), pytest.raises(EventError) as caught:
            decode({**FILL, "price": raw})
        assert str(caught.value).startswith("price: out of range")


def test_zero_with_an_exponent_beyond_decimal_is_zero() -> None:
    """Zero is zero whatever its exponent (contract: the range bounds non-zero numbers)."""
    event = decode({**FILL, "fee": "0.000E+99999999999999999999"})
    assert isinstance(event, Fill) and event.fee == Decimal(0)
    with pytest.raises(EventError, match="price: must be > 0"):
        decode({**FILL, "price": "0E-99999999999999999999"})
