"""Capital manager: answers ``request.capital.allocation`` with ``response.capital.allocation``.

The response's ``request_id`` is the request's ``message_id``; it carries the request's strategy id in its
headers, so ``*.strategy_<id>.*`` subscribers see it. The rules are tradebus/letrade/capital.py.
"""

from __future__ import annotations

from celery.utils.log import get_task_logger

from routing.letrade import CAPITAL_MANAGER
from tradebus import handling
from tradebus.letrade import capital, paper
from tradebus.letrade.messages import (
    CapitalAllocationRequestMessage,
    CapitalAllocationResponseMessage,
    build,
    derived_id,
)
from tradebus.letrade.stage import letrade_stage, publish

logger = get_task_logger(__name__)
SOURCE = "capital_manager"


@letrade_stage(
    "tradebus.letrade_capital_manager.allocate",
    queue=CAPITAL_MANAGER.name,
    accepts=CapitalAllocationRequestMessage,
    handler_checks_repeats=True,
)
def allocate(message: CapitalAllocationRequestMessage) -> None:
    """Approve, reduce or reject a strategy's request for capital. The account, the prices and the stage's
    check for a repeat of the request are read in one Redis round trip (four before)."""
    account, prices, repeat = paper.snapshot(handling.repeat_read())
    handling.drop_if_repeat(repeat)
    answer = capital.allocate(message.payload, message.message_id, account, prices)
    logger.info(
        "allocation %s for strategy %s: %s %s",
        message.message_id,
        message.payload.strategy_id,
        answer.result,
        answer.approved_quantity,
    )
    # The response's id derives from the request's: a redelivered request answers with the same message.
    response = build(
        CapitalAllocationResponseMessage,
        answer,
        SOURCE,
        message_id=derived_id("response", message.message_id),
    )
    publish(response, strategy_id=message.payload.strategy_id)
