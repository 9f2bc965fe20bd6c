"""A stage's own handler on a valid delivery, and what a stage notes once it handled one.

Split from tradebus/stage.py so a batch (tradebus/batching.py) can run the same steps on their own: a batch
validates and records each delivery once, then hands the valid messages to the stage's ``batch_handler``;
only if that fails does each message go through the stage's handler here (no second validation, record or
repeat check, which would drop the message as a repeat of itself).
"""

from __future__ import annotations

from typing import Any, NoReturn

from celery import current_task
from celery.exceptions import Ignore, Reject, Retry
from celery.utils.log import get_task_logger

from tradebus import recorder, seen, tracing
from tradebus.errors import InvalidMessage, Reason
from tradebus.retries import is_transient

logger = get_task_logger(__name__)
#: Celery's own control-flow exceptions: they must reach Celery, not the dead-letter queue.
CELERY_CONTROL = (Retry, Reject, Ignore)
#: What a batch's collecting handler returns (tradebus/batching.py): kept for the stage's batch handler,
#: not handled yet, so not noted as handled.
COLLECTED = object()


def handle(task: Any, payload: Any, message: Any) -> tuple[bool, Any]:
    """Run ``task``'s handler on ``message``: (True, its result) once handled, (False, None) once a failure
    ended in a retry or the DLQ with its reason, (False, COLLECTED) when a batch kept it for later."""
    try:
        with tracing.processing(task):  # a span only when tracing is on and the message is in a trace
            result = task.handler(message)
        return result is not COLLECTED, result
    except CELERY_CONTROL:
        raise
    except InvalidMessage as exc:  # the stage found the message breaks a rule a retry cannot fix
        task.dead_letter(payload, exc.reason, str(exc))
    except Exception as exc:  # every failure ends in a retry or the DLQ with its reason
        if is_transient(exc):
            task.retry_or_give_up(payload, exc)
            return False, None
        logger.exception("%s: stage %s failed on %s", task.queue_name, task.name, task.request.id)
        task.dead_letter(payload, Reason.STAGE_ERROR, f"{type(exc).__name__}: {exc}")
    return False, None


def handled_id(task: Any, message_id: str | None) -> str | None:
    """The id a handled delivery is noted under (tradebus/seen.py), if any: the publisher's (``message_id``,
    from ``publisher_id``), or for a retry the id Celery keeps across retries (the original's), so a copy
    published after it is still a repeat. A retry is not checked (it is the same delivery going on)."""
    request = task.request
    return message_id or (str(request.id) if request.retries and request.id else None)


def note(task: Any, message_id: str | None) -> None:
    """Note the current delivery as handled (``handled_id``), so a copy of it is dropped as a repeat."""
    handled = handled_id(task, message_id)
    if handled is not None:
        seen.note(task.queue_name, handled)


def drop_repeat(task: Any, message_id: str) -> NoReturn:
    """Drop the current delivery, a repeat of ``message_id`` already handled: acknowledged (Ignore), and no
    result stored over the first copy's (a risk check's answer)."""
    logger.warning("%s: dropping %s, a repeat of a message already handled", task.queue_name, message_id)
    recorder.bump(f"repeats_dropped:{task.queue_name}")
    raise Ignore


def repeat_read() -> tuple[str, ...] | None:
    """For a stage whose handler checks repeats itself (``handler_checks_repeats``): the Redis read that tells
    whether the running delivery is a repeat, to send with reads the handler makes anyway; None when it
    cannot be one. Hand its value to ``drop_if_repeat`` before acting."""
    message_id = current_task.publisher_id()
    return None if message_id is None else seen.read(current_task.queue_name, message_id)


def drop_if_repeat(value: Any) -> None:
    """Drop the running delivery (``drop_repeat``) if ``repeat_read``'s value says it is a repeat."""
    if seen.recent(value):
        drop_repeat(current_task, str(current_task.publisher_id()))
