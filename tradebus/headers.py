"""Every AMQP header tradebus writes or reads, by name: a leaf module every layer may import."""

from __future__ import annotations

#: The message type, so a consumer can tell what it got without parsing the body.
TYPE = "x-tradebus-type"
#: The publish time (Unix seconds, float): stages measure their latency from it.
PUBLISHED_AT = "x-tradebus-published-at"
#: A market message's symbol: what a consistent-hash exchange shards on (routing/mastertrade/shards.py;
#: equal to routing.mastertrade.keys.SYMBOL_HEADER). A publisher that leaves it out still reaches one shard.
SYMBOL = "x-tradebus-symbol"
#: The content type a raw delivery arrived with, for the stage to check.
CONTENT_TYPE = "x-tradebus-content-type"

# A dead letter's reason and origin (tradebus/deadletter.py).
REASON = "x-tradebus-reason"
ERROR = "x-tradebus-error"
QUEUE = "x-tradebus-queue"
ORIGINAL_EXCHANGE = "x-tradebus-original-exchange"
ORIGINAL_ROUTING_KEY = "x-tradebus-original-routing-key"
ORIGINAL_MESSAGE_ID = "x-tradebus-original-message-id"
DEAD_LETTERED_AT = "x-tradebus-dead-lettered-at"
RETRIES = "x-tradebus-retries"

# Signatures (tradebus/signing.py).
SIGNER = "x-tradebus-signer"
SIGNATURE = "x-tradebus-signature"
SIGNED_AT = "x-tradebus-signed-at"

# Traces (tradebus/tracing.py): W3C Trace Context, written and read by OpenTelemetry's propagators.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# Replays of dead letters (tradebus dlq replay).
REPLAY_OF = "x-tradebus-replay-of"
REPLAYED_FROM = "x-tradebus-replayed-from"
REPLAYED_AT = "x-tradebus-replayed-at"
