"""Tests on the real RabbitMQ and Redis (a vhost and a Redis prefix of the session's own)."""
