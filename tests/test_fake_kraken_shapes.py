"""The stand-in answers with Kraken's documented shapes (tests/kraken_shapes.py): every
key Kraken documents, with its JSON type, for each endpoint mmops calls — driven through
the real ccxt client, so the requests are ccxt's own."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.fake_kraken import FakeKraken
from tests.kraken_env import place
from tests.kraken_shapes import SAMPLES, compare, shape
from trading.ccxt_exchange import CcxtExchange
from trading.exchange import SellRequest


def sell(client_id: str, amount: str = "0.01") -> SellRequest:
    return SellRequest(
        symbol="BTC/USD", amount=Decimal(amount), price=Decimal("64600.0"), client_id=client_id
    )


@pytest.fixture
async def answers(ex: CcxtExchange, kraken: FakeKraken) -> dict[str, object]:
    """One answer of each endpoint, from a short session of mmops' own calls."""
    order = await place(ex, "6d6d6f70-1a2b-4c3d-8e4f-000000000001", price="64600.0")
    await ex.place_limit_sells([sell("b-1"), sell("b-2", amount="50")])  # one ok, one refused
    filled = await place(ex, "c-filled", price="64601.0")
    kraken.fill(filled.id)
    await ex.open_orders("BTC/USD")
    await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id="c-filled")  # closed
    await ex.fetch_order(symbol="BTC/USD", order_id=order.id)
    await ex.cancel_order(symbol="BTC/USD", order_id=order.id)
    await ex.quote("BTC/USD")
    return {endpoint: kraken.calls(endpoint)[0].answer for endpoint in SAMPLES}


@pytest.mark.parametrize("endpoint", sorted(SAMPLES))
def test_the_stand_in_answers_with_krakens_documented_shape(
    answers: dict[str, object], endpoint: str
) -> None:
    missing, notes = compare(shape(SAMPLES[endpoint]), shape(answers[endpoint]))
    assert missing == [], missing
    assert [n for n in notes if n.startswith("type of")] == []
