"""Wire encoding shared by every profile: bytes on the wire, the size limit, JSON content types.

A leaf of the core: the publisher, the consumer, dead letters, signing and both profiles' message models
encode and check bodies here, so there is one implementation of each.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel, ValidationError

from tradebus.errors import MessageTooLarge, UnsupportedContentType

#: Letrade_v1's limit, applied to every message tradebus publishes or accepts.
MAX_MESSAGE_BYTES = 128 * 1024
CONTENT_TYPE = "application/json"
#: Content types a JSON body may arrive with; a publisher that sets none is taken at its word that it is JSON.
JSON_CONTENT_TYPES = frozenset({"", "application/json", "text/json", "text/plain"})


def new_message_id() -> str:
    """A random (version 4) UUID as text, what ``str(uuid.uuid4())`` gives at under half its cost: every
    message published gets one, a market-data feed thousands a second."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    x = raw.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def wire_bytes(body: str | bytes) -> bytes:
    """A body as the bytes it travels as: text is UTF-8, and bytes that were not UTF-8 come back as they
    were (a consumer decodes raw bodies with ``surrogateescape``, so a dead letter is byte for byte)."""
    return body.encode("utf-8", errors="surrogateescape") if isinstance(body, str) else body


def is_json_content_type(content_type: str | None) -> bool:
    """Whether a message labelled ``content_type`` may be read as JSON (pickle never is)."""
    return (content_type or "").split(";")[0].strip().lower() in JSON_CONTENT_TYPES


def check_incoming(body: str | bytes, content_type: str | None) -> None:
    """Refuse a delivery that is not JSON or is over the size limit, before anything parses it."""
    if not is_json_content_type(content_type):
        raise UnsupportedContentType(f"content type {content_type!r} is refused; the bus carries JSON only")
    size = len(wire_bytes(body))
    if size > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")


def encode_model(model: BaseModel, what: str) -> bytes:
    """The JSON body of ``model``, refused when over the size limit (``what`` names it in the error)."""
    return _within_limit(model.model_dump_json().encode(), what)


def encode_json(data: Any, what: str) -> bytes:
    """The compact JSON body of ``data`` (a message's JSON object), refused when over the size limit."""
    return _within_limit(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(), what)


def _within_limit(body: bytes, what: str) -> bytes:
    if len(body) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"{what} message is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES} "
            "(send large data by reference)"
        )
    return body


def describe(exc: ValidationError) -> str:
    """A validation error in one line per field: ``quantity: Input should be greater than 0``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}" for err in exc.errors()
    )
