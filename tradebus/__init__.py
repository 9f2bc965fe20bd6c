"""tradebus: the MasterTrade message bus on RabbitMQ, with each pipeline stage a Celery task.

``tradebus.app`` is the Celery application (``celery -A tradebus worker -Q order_requests``);
``tradebus.publish(message)`` sends any bus message to its exchange with the routing key its payload implies.
"""

from tradebus.app import app
from tradebus.publisher import publish

__all__ = ["app", "publish"]
