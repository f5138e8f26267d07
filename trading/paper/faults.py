"""Exchange faults on demand, for chaos runs (setting PAPER_FAULTS; never in production).

Each call of the paper exchange that a real exchange could fail draws one number and
gets at most one fault; a batch draws once per request. The kinds, by call
(base.settings.PAPER_FAULT_CALLS):

- place (`place_limit_sell`, each request of `place_limit_sells`): ``rate_limit``,
  ``place_5xx`` and ``place_timeout`` raise a TransientError before anything changed;
  ``post_only`` rejects a post-only request (PostOnlyRejected) although it would not
  cross — after the duplicate client id check, as the exchange would; ``lost_response``
  lets the request run (the order IS placed) and then raises a TransientError instead of
  its answer, so the caller cannot tell what happened;
- cancel (`cancel_order`): ``rate_limit``, ``cancel_5xx``, before anything changed;
- fetch (`fetch_order`, `fetch_order_by_client_id`, `open_orders`, `free_balance`,
  `quote`): ``rate_limit``, ``fetch_5xx``.

The simulator hooks (`observe_fill`, `set_price`, `fill_order`, `orders`, `balances`)
and `market` never fail. Messages carry Kraken's error text and the kind
(``EService:Unavailable (paper fault place_5xx)``). Every injected fault is counted in
the paper account's ``faults`` hash (kind -> count), so a run can report them across
processes. With PAPER_FAULTS_SEED the draws of one process are reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from base.setting_values import PAPER_FAULT_CALLS, check_paper_faults
from trading.exchange import TransientError

MESSAGES = {
    "rate_limit": "EAPI:Rate limit exceeded",
    "place_5xx": "EService:Unavailable",
    "cancel_5xx": "EService:Unavailable",
    "fetch_5xx": "EService:Unavailable",
    "place_timeout": "request timed out, the order was not placed",
    "lost_response": "request timed out, the order may have been placed",
    "post_only": "EOrder:Post only order",
}


class PaperFaults:
    """The fault table of one exchange object and its random source."""

    def __init__(self, probabilities: Mapping[str, float], seed: int | None = None) -> None:
        check_paper_faults("PAPER_FAULTS", tuple(probabilities.items()))
        self._random = random.Random(seed)
        self._table = {
            call: [(kind, probabilities[kind]) for kind in kinds if probabilities.get(kind)]
            for call, kinds in PAPER_FAULT_CALLS.items()
        }

    def draw(self, call: str) -> str | None:
        """The fault kind for one call of this kind ('place', 'cancel', 'fetch'), or None."""
        table = self._table[call]
        if not table:
            return None
        point = self._random.random()
        for kind, probability in table:
            if point < probability:
                return kind
            point -= probability
        return None


def fault_error(kind: str) -> TransientError:
    return TransientError(f"{MESSAGES[kind]} (paper fault {kind})")
