"""The wire contract (docs/contract.md §1): every rejection names its field in one line; valid
events round-trip; nothing but EventError ever escapes `decode`, whatever the input."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import Event, EventError, Fill, Order, SessionEnded, SessionStarted, decode, encode
from events.codec import MAX_ENTRY_BYTES, session_of

FILL: dict[str, str] = {
    "type": "fill",
    "session_id": "s-42",
    "fill_id": "f-1",
    "order_id": "o-7",
    "symbol": "BTC/USD",
    "side": "buy",
    "price": "64000.5",
    "quantity": "0.010",
    "fee": "0.16",
    "ts": "1763700000000",
}
ORDER: dict[str, str] = {
    "type": "order",
    "session_id": "s-42",
    "order_id": "o-7",
    "symbol": "ETH/USD",
    "side": "sell",
    "order_type": "limit",
    "price": "3000.25",
    "quantity": "1.5",
    "status": "open",
    "ts": "1763700000001",
}
STARTED: dict[str, str] = {
    "type": "session_started",
    "session_id": "s-42",
    "pairs": "BTC/USD,ETH/USD",
    "ts": "1",
}
ENDED: dict[str, str] = {
    "type": "session_ended",
    "session_id": "s-42",
    "ts": "1763703600000",
    "fills": "12",
    "reason": "end of day",
}
TEN_MB = "x" * 10_000_000

_DROP = object()


def _with(base: dict[str, str], **changes: Any) -> dict[Any, Any]:
    out: dict[Any, Any] = dict(base)
    for key, value in changes.items():
        if value is _DROP:
            out.pop(key)
        else:
            out[key] = value
    return out


# (case id, fields, the field the message must name, a fragment of the reason)
REJECTIONS: list[tuple[str, dict[Any, Any], str, str]] = [
    ("missing price", _with(FILL, price=_DROP), "price", "missing"),
    ("missing ts", _with(FILL, ts=_DROP), "ts", "missing"),
    (
        "missing session_id of session_ended",
        _with(ENDED, session_id=_DROP),
        "session_id",
        "missing",
    ),
    ("missing type", _with(FILL, type=_DROP), "type", "missing"),
    ("unknown type", _with(FILL, type="trade"), "type", "unknown event type 'trade'"),
    ("empty type", _with(FILL, type=""), "type", "unknown event type"),
    ("unknown field", _with(FILL, colour="blue"), "colour", "unknown field for a fill event"),
    ("field of another type", _with(FILL, status="open"), "status", "unknown field"),
    ("NaN price", _with(FILL, price="NaN"), "price", "not a finite decimal: 'NaN'"),
    ("sNaN price", _with(FILL, price="sNaN"), "price", "not a finite decimal"),
    ("Infinity price", _with(FILL, price="Infinity"), "price", "not a finite decimal"),
    ("-Infinity fee", _with(FILL, fee="-Infinity"), "fee", "not a finite decimal"),
    ("inf quantity", _with(FILL, quantity="inf"), "quantity", "not a finite decimal"),
    ("1E+1000 price", _with(FILL, price="1E+1000"), "price", "out of range"),
    (
        "1E+1000000 price (beyond Decimal's Emax)",
        _with(FILL, price="1E+1000000"),
        "price",
        "out of range",
    ),
    ("1e15 quantity", _with(FILL, quantity="1e15"), "quantity", "out of range"),
    ("below 1E-18", _with(FILL, price="0.0000000000000000001"), "price", "out of range"),
    ("39 significant digits", _with(FILL, price="1." + "0" * 38), "price", "significant digits"),
    ("plus sign", _with(FILL, price="+1"), "price", "not a decimal number"),
    ("underscore", _with(FILL, quantity="1_0"), "quantity", "not a decimal number"),
    ("blanks", _with(FILL, quantity=" 2 "), "quantity", "not a decimal number"),
    ("non-ASCII digits", _with(FILL, price="١٢"), "price", "not a decimal number"),
    ("bad client order id", _with(FILL, client_order_id="a b"), "client_order_id", "1-64"),
    ("not a number", _with(FILL, price="64k"), "price", "not a decimal number"),
    ("empty price", _with(FILL, price=""), "price", "not a decimal number"),
    ("float-ish junk", _with(FILL, price="1.2.3"), "price", "not a decimal number"),
    ("negative price", _with(FILL, price="-64000"), "price", "must be > 0"),
    ("zero price", _with(FILL, price="0"), "price", "must be > 0"),
    ("negative zero price", _with(FILL, price="-0.0"), "price", "must be > 0"),
    ("negative zero fee", _with(FILL, fee="-0"), "fee", "must be >= 0"),
    ("zero quantity", _with(FILL, quantity="0.000"), "quantity", "must be > 0"),
    ("negative fee", _with(FILL, fee="-0.01"), "fee", "must be >= 0"),
    ("negative order quantity", _with(ORDER, quantity="-1"), "quantity", "must be > 0"),
    ("space in session id", _with(FILL, session_id="s 42"), "session_id", "[A-Za-z0-9._:-]"),
    ("slash in fill id", _with(FILL, fill_id="f/1"), "fill_id", "[A-Za-z0-9._:-]"),
    ("brace in order id", _with(FILL, order_id="o{7}"), "order_id", "[A-Za-z0-9._:-]"),
    ("empty order id", _with(FILL, order_id=""), "order_id", "expected 1-64"),
    ("non-ASCII id", _with(FILL, fill_id="fé-1"), "fill_id", "expected 1-64"),
    ("65-character id", _with(FILL, fill_id="f" * 65), "fill_id", "expected 1-64"),
    ("symbol without quote", _with(FILL, symbol="BTCUSD"), "symbol", "BASE/QUOTE"),
    ("symbol with two slashes", _with(FILL, symbol="BTC/USD/EUR"), "symbol", "BASE/QUOTE"),
    ("symbol with a space", _with(FILL, symbol="BTC / USD"), "symbol", "BASE/QUOTE"),
    ("empty base", _with(ORDER, symbol="/USD"), "symbol", "BASE/QUOTE"),
    ("side in capitals", _with(FILL, side="BUY"), "side", "expected 'buy' or 'sell'"),
    ("side hold", _with(ORDER, side="hold"), "side", "expected 'buy' or 'sell'"),
    ("fractional ts", _with(FILL, ts="1763700000000.5"), "ts", "non-negative integer"),
    ("negative ts", _with(FILL, ts="-1"), "ts", "non-negative integer"),
    ("exponent ts", _with(FILL, ts="1e12"), "ts", "non-negative integer"),
    ("non-ASCII digits ts", _with(FILL, ts="١٢٣"), "ts", "non-negative integer"),
    ("ts beyond any clock", _with(FILL, ts="100000000000000"), "ts", "out of range"),
    ("fills count not a number", _with(ENDED, fills="many"), "fills", "non-negative integer"),
    ("reason with a newline", _with(ENDED, reason="a\nb"), "reason", "printable text"),
    ("reason too long", _with(ENDED, reason="r" * 257), "reason", "at most 256"),
    ("pairs with a duplicate", _with(STARTED, pairs="BTC/USD,BTC/USD"), "pairs", "listed twice"),
    ("pairs with a bad symbol", _with(STARTED, pairs="BTC/USD,ETH"), "pairs", "BASE/QUOTE"),
    ("empty pairs", _with(STARTED, pairs=""), "pairs", "BASE/QUOTE"),
    ("bad fee currency", _with(FILL, fee_currency="U$D"), "fee_currency", "currency code"),
    ("bad order type", _with(FILL, order_type="limit;drop"), "order_type", "1-32 characters"),
    ("bad order status", _with(ORDER, status="x" * 33), "status", "1-32 characters"),
    (
        "oversized entry (10 MB field)",
        _with(FILL, order_type=TEN_MB),
        "order_type",
        f"entry larger than {MAX_ENTRY_BYTES} bytes",
    ),
    ("oversized entry (10 MB unknown field)", _with(FILL, junk=TEN_MB), "junk", "entry larger"),
    ("non-UTF-8 value", _with(FILL, symbol=b"BTC/\xff\xfe"), "symbol", "not valid UTF-8"),
    ("non-UTF-8 field name", {**FILL, b"\xff": "1"}, "<field name>", "not valid UTF-8"),
    ("field name with a newline", {**FILL, "a\nb": "1"}, "'a\\nb'", "unknown field"),
    (
        "a dict as a value",
        _with(FILL, price={"value": "1"}),
        "price",
        "expected a string, got dict",
    ),
    (
        "a list as a value",
        _with(FILL, quantity=["1", "2"]),
        "quantity",
        "expected a string, got list",
    ),
    ("a float as a value", _with(FILL, price=64000.5), "price", "expected a string, got float"),
    ("None as a value", _with(FILL, fee=None), "fee", "expected a string, got NoneType"),
]


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        pytest.param(fields, field, fragment, id=case)
        for case, fields, field, fragment in REJECTIONS
    ],
)
def test_rejection_names_the_field_in_one_line(
    fields: dict[Any, Any], field: str, fragment: str
) -> None:
    with pytest.raises(EventError) as caught:
        decode(fields)
    message = str(caught.value)
    assert caught.value.field == field
    assert message.startswith(f"{field}: "), message
    assert fragment in message
    assert "\n" not in message
    assert len(message) < 200


@pytest.mark.parametrize(
    ("fields", "field"),
    [pytest.param(fields, field, id=case) for case, fields, field, _ in REJECTIONS],
)
def test_rejection_of_redis_bytes_is_the_same(fields: dict[Any, Any], field: str) -> None:
    """XREADGROUP answers bytes: the same input as bytes is rejected for the same field."""
    as_bytes = {
        (k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
        for k, v in fields.items()
    }
    with pytest.raises(EventError) as caught:
        decode(as_bytes)
    assert caught.value.field == field


def test_a_missing_payload_or_a_non_map_is_rejected() -> None:
    with pytest.raises(EventError, match="trimmed from the stream"):
        decode(None)
    with pytest.raises(EventError, match="expected a field map, got list"):
        decode(["type", "fill"])  # type: ignore[arg-type]


def test_entry_size_limit_is_a_parameter() -> None:
    assert isinstance(decode(FILL, max_bytes=200), Fill)
    with pytest.raises(EventError, match="entry larger than 100 bytes"):
        decode(FILL, max_bytes=100)


def test_limits_that_are_still_valid() -> None:
    event = decode(
        _with(
            FILL,
            fill_id="f" * 64,
            price="0.000000000000000001",
            fee="0",
            quantity="999999999999999.999999999999999999",
            ts="0",
        )
    )
    assert isinstance(event, Fill)
    assert event.fill_id == "f" * 64
    assert event.price == Decimal("1e-18")
    # 33 significant digits: kept exactly, not rounded to the 28 digits of the default context
    assert str(event.quantity) == "999999999999999.999999999999999999"
    assert event.fee == 0


@pytest.mark.parametrize("raw", ["0", "0E-100", "0.000", "0E-1000000000"])
def test_zero_fee_is_normalised(raw: str) -> None:
    event = decode(_with(FILL, fee=raw))
    assert isinstance(event, Fill)
    assert event.fee == 0
    assert encode(event)["fee"] == "0"


def test_decoded_fill_has_exact_decimals_and_defaults() -> None:
    event = decode(FILL)
    assert event == Fill(
        session_id="s-42",
        fill_id="f-1",
        order_id="o-7",
        symbol="BTC/USD",
        side="buy",
        price=Decimal("64000.5"),
        quantity=Decimal("0.010"),
        fee=Decimal("0.16"),
        ts=1763700000000,
    )
    assert isinstance(event, Fill)
    assert type(event.price) is Decimal
    assert (event.base, event.quote) == ("BTC", "USD")
    assert event.fee_currency is None and event.order_type is None


EXAMPLES: list[Event] = [
    decode(FILL),
    decode(_with(FILL, fee_currency="BTC", order_type="limit", side="sell")),
    decode(ORDER),
    decode(STARTED),
    decode(ENDED),
    decode(_with(ENDED, fills=_DROP, reason=_DROP)),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(event: Event) -> None:
    fields = encode(event)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert decode(fields) == event
    redis_form = {k.encode(): v.encode() for k, v in fields.items()}
    assert decode(redis_form) == event


def test_encode_is_the_flat_contract_form() -> None:
    assert encode(decode(FILL)) == {**FILL, "quantity": "0.010"}
    assert encode(decode(STARTED))["pairs"] == "BTC/USD,ETH/USD"
    assert "fills" not in encode(decode(_with(ENDED, fills=_DROP)))
    assert encode(decode(_with(FILL, price="1E+3")))["price"] == "1000"


def test_session_of_reads_without_decoding() -> None:
    assert session_of({b"session_id": b"s-1", b"junk": b"\xff"}) == "s-1"
    assert session_of({"session_id": "s-2"}) == "s-2"
    assert session_of(None) is None
    assert session_of({b"type": b"fill"}) is None


# --- properties ---------------------------------------------------------------------
ids = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)
symbols = st.from_regex(r"[A-Za-z0-9.]{1,24}/[A-Za-z0-9.]{1,24}", fullmatch=True)
words = st.from_regex(r"[A-Za-z0-9_ -]{1,32}", fullmatch=True)
currencies = st.from_regex(r"[A-Za-z0-9.]{1,24}", fullmatch=True)
timestamps = st.integers(min_value=0, max_value=10**14 - 1)
sides = st.sampled_from(["buy", "sell"])


def _scaled(places: int) -> st.SearchStrategy[Decimal]:
    # exact construction: Decimal(f"{n}E-{places}") never rounds
    return st.integers(min_value=1, max_value=10 ** (15 + places) - 1).map(
        lambda n: Decimal(f"{n}E-{places}")
    )


positive = st.integers(min_value=0, max_value=18).flatmap(_scaled)
non_negative = st.one_of(st.just(Decimal(0)), positive)
reasons = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
    min_size=1,
    max_size=256,
).filter(str.isprintable)

fills = st.builds(
    Fill,
    session_id=ids,
    fill_id=ids,
    order_id=ids,
    symbol=symbols,
    side=sides,
    price=positive,
    quantity=positive,
    fee=non_negative,
    ts=timestamps,
    fee_currency=st.none() | currencies,
    order_type=st.none() | words,
)
events: st.SearchStrategy[Event] = st.one_of(
    fills,
    st.builds(
        Order,
        session_id=ids,
        order_id=ids,
        symbol=symbols,
        side=sides,
        order_type=words,
        price=positive,
        quantity=positive,
        status=words,
        ts=timestamps,
    ),
    st.builds(
        SessionStarted,
        session_id=ids,
        ts=timestamps,
        pairs=st.lists(symbols, min_size=1, max_size=8, unique=True).map(tuple),
    ),
    st.builds(
        SessionEnded,
        session_id=ids,
        ts=timestamps,
        fills=st.none() | st.integers(min_value=0, max_value=10**12 - 1),
        reason=st.none() | reasons,
    ),
)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(events)
def test_property_round_trip(event: Event) -> None:
    fields = encode(event)
    assert decode(fields) == event
    assert decode({k.encode(): v.encode() for k, v in fields.items()}) == event


FIELD_NAMES = sorted(
    {"type", "pairs", "status", "fills", "reason", "fee_currency", "order_type", *FILL}
)
TRICKY_VALUES = [
    "fill",
    "order",
    "session_started",
    "session_ended",
    "buy",
    "sell",
    "BTC/USD",
    "NaN",
    "-Infinity",
    "1E+1000000",
    "1E-1000000",
    "-0",
    "0E-999999999",
    "1_000",
    "١٢",
    " 1 ",
    "99999999999999.999999999999999999",
    "1e15",
    "",
    "s-1",
    "a,b",
    "BTC/USD,BTC/USD",
]
field_keys = st.one_of(
    st.sampled_from(FIELD_NAMES),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.sampled_from([k.encode() for k in FIELD_NAMES]),
)
field_values = st.one_of(
    st.sampled_from(TRICKY_VALUES),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from([v.encode() for v in TRICKY_VALUES]),
    st.integers().map(str),
    st.decimals().map(str),
)


@PROPERTY
@given(st.dictionaries(field_keys, field_values, max_size=14))
def test_property_arbitrary_maps_raise_only_event_error(fields: dict[Any, Any]) -> None:
    try:
        event = decode(fields)
    except EventError as exc:
        assert "\n" not in str(exc)
        return
    assert decode(encode(event)) == event


junk = st.one_of(
    st.text(max_size=30),
    st.binary(max_size=30),
    st.sampled_from(TRICKY_VALUES),
    st.integers(),
    st.floats(),
    st.none(),
    st.booleans(),
    st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    st.just(TEN_MB),
)
mutations = st.lists(
    st.one_of(
        st.tuples(st.just("drop"), st.sampled_from(sorted(FILL)), st.none()),
        st.tuples(st.just("replace"), st.sampled_from(sorted(FILL)), junk),
        st.tuples(st.just("add"), field_keys, junk),
    ),
    min_size=1,
    max_size=4,
)


@PROPERTY
@given(fills, mutations)
def test_property_mutated_fill_is_rejected_or_valid(
    fill: Fill, changes: list[tuple[str, Any, Any]]
) -> None:
    fields: dict[Any, Any] = dict(encode(fill))
    for kind, key, value in changes:
        if kind == "drop":
            fields.pop(key, None)
        else:
            fields[key] = value
    try:
        event = decode(fields)
    except EventError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(event, Fill | Order | SessionStarted | SessionEnded)
    assert decode(encode(event)) == event


def test_a_repeated_field_makes_the_entry_invalid() -> None:
    """A raw reply keeps every (name, value) pair; a name given twice is an invalid entry."""
    pairs = [(k.encode(), v.encode()) for k, v in FILL.items()]
    assert isinstance(decode(pairs), Fill)
    with pytest.raises(EventError, match=r"^price: repeated field$"):
        decode([*pairs, (b"price", b"1")])
    assert session_of([(b"type", b"fill"), (b"session_id", b"s-9")]) == "s-9"


def test_numbers_within_the_contract_bounds() -> None:
    event = decode(
        _with(FILL, price="1.0000000000000000001", quantity="999999999999999", fee="1E-18")
    )
    assert isinstance(event, Fill)
    assert event.price == Decimal("1.0000000000000000001")
    assert event.fee == Decimal("1E-18")
    with pytest.raises(EventError, match="out of range"):
        decode(_with(FILL, quantity="1000000000000000"))


def test_client_order_id_is_carried() -> None:
    event = decode(_with(FILL, client_order_id="6d6d6f70-0000-5000-8000-000000000001"))
    assert isinstance(event, Fill)
    assert event.client_order_id == "6d6d6f70-0000-5000-8000-000000000001"
    assert encode(event)["client_order_id"] == event.client_order_id
