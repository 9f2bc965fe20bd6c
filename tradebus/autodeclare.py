"""Declare the whole topology whenever a worker's consumer (re)connects, before it consumes anything.

Celery declares the queues a worker consumes, but not the alternate exchanges, the unrouted queues or the
dead-letter queues; without those, unroutable messages and dead letters would vanish. The policies (each
exchange's alternate exchange, the queues' dead-lettering) need the management API: a worker applies them
when it answers and warns when it does not.

A least-privilege worker (``TRADEBUS_DECLARE_TOPOLOGY=0``, docs/security.md) declares nothing: its RabbitMQ
user may not, and the admin user declared the topology before any worker started.
"""

from __future__ import annotations

from amqp.exceptions import AccessRefused
from celery import Celery
from celery.utils.log import get_logger
from kombu import Connection

from tradebus.errors import BrokerUnreachable, ManagementAPIError
from tradebus.management import Management
from tradebus.topology import apply_policies, declare

logger = get_logger(__name__)
#: Seconds a starting worker waits for the management API before going on without it.
MANAGEMENT_TIMEOUT = 3.0


def declare_topology(app: Celery, connection: Connection) -> None:
    """Declare every exchange, queue and binding of ``app``'s topology on ``connection``, and the policies.

    Called by the worker's consumer (tradebus/consumer.py) each time it connects, so the dead-letter
    queues and alternate exchanges exist before the first message is taken.
    """
    topology, settings = app.topology, app.settings
    if not settings.declare_topology:
        logger.info(
            "TRADEBUS_DECLARE_TOPOLOGY=0: this worker declares nothing and consumes the topology the "
            "admin user declared (`tradebus topology declare`)"
        )
        return
    try:
        down = declare(topology, connection)
    except AccessRefused:
        logger.error(
            "this worker's RabbitMQ user may not declare the topology; a least-privilege worker runs "
            "with TRADEBUS_DECLARE_TOPOLOGY=0 after the admin user ran `tradebus topology declare`"
        )
        raise
    if down:
        logger.warning(
            "the node of these queues is down, they are unavailable until it is back: %s", ", ".join(down)
        )
    if connection.transport.driver_type != "amqp" or not topology.policies:
        return  # the in-memory transport has no policies (docs/topology.md)
    try:
        apply_policies(topology, Management(settings.management, timeout=MANAGEMENT_TIMEOUT))
    except (BrokerUnreachable, ManagementAPIError) as exc:
        logger.warning(
            "policies not applied (%s); run `tradebus topology declare` so that unroutable messages "
            "reach their alternate exchanges and expired market data is dead-lettered, not dropped",
            exc,
        )
