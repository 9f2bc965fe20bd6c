"""Letrade_v1's services as Celery stages, one module each (loaded with ``TRADEBUS_TOPOLOGY=letrade``)."""
