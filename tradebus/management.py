"""A small client of the RabbitMQ management HTTP API (stdlib only).

A cluster has one API per node (``TRADEBUS_MANAGEMENT_URL`` lists them, tradebus/settings.py): a request
goes to the node that answered last, and to the next ones in turn when it does not answer. Any node serves
the whole cluster's view, so which one answers does not change the result.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from tradebus.errors import BrokerUnreachable, ManagementAPIError, ManagementNotConnected
from tradebus.settings import ManagementSettings, TLSSettings

#: Requests another node may be asked again when the connection to one was lost midway.
IDEMPOTENT = frozenset({"GET", "PUT"})


class Management:
    """The management API of one broker (or of any node of a cluster), scoped to one vhost."""

    def __init__(
        self, settings: ManagementSettings, timeout: float = 10.0, tls: TLSSettings | None = None
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        token = base64.b64encode(f"{settings.username}:{settings.password}".encode()).decode()
        self._auth = f"Basic {token}"
        self._context: ssl.SSLContext | None = None
        #: The node's API that answered last: the first one tried next time.
        self._node = 0
        if any(url.startswith("https:") for url in settings.base_urls):
            # https with the broker's CA and client certificate (TRADEBUS_BROKER_*_FILE, tradebus/tls.py).
            from tradebus.application import current_settings
            from tradebus.tls import client_context

            self._context = client_context(tls if tls is not None else current_settings().tls)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Call ``/api/<path>`` on the first node's API that answers; returns the decoded JSON answer (None
        when empty). BrokerUnreachable when none answers."""
        bases = self.settings.base_urls
        problems = []
        for step in range(len(bases)):
            node = (self._node + step) % len(bases)
            try:
                answer = self._request(bases[node], method, path, body)
            except BrokerUnreachable as exc:
                # A read or a PUT is the same asked twice; a DELETE lost midway may have been carried out.
                if not isinstance(exc, ManagementNotConnected) and method not in IDEMPOTENT:
                    raise
                problems.append(str(exc))
                continue
            self._node = node
            return answer
        raise BrokerUnreachable("; ".join(problems))

    def _request(self, base_url: str, method: str, path: str, body: Any) -> Any:
        """One request to one node's API. ManagementNotConnected when no connection was made (nothing was
        sent: the next node may be asked); BrokerUnreachable when it was lost after (the request may have
        been carried out: only an idempotent one is sent elsewhere)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{base_url}/api/{path}", data=data, method=method)
        req.add_header("Authorization", self._auth)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._context) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ManagementAPIError(f"{method} /api/{path}: HTTP {exc.code} {detail}") from exc
        except urllib.error.URLError as exc:  # urllib's wrapping of a failed connection
            raise ManagementNotConnected(f"management API at {base_url}: {exc}") from exc
        except OSError as exc:
            raise BrokerUnreachable(f"management API at {base_url}: {exc}") from exc
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        """GET ``/api/<path>``."""
        return self.request("GET", path)

    def reachable(self) -> bool:
        """Whether the API answers with these credentials."""
        try:
            self.get("overview")
        except (BrokerUnreachable, ManagementAPIError):
            return False
        return True

    def answering(self) -> str:
        """The base URL of the first node's API that answers now (the first listed when none does): for
        tools that take one address, as Flower does."""
        self.reachable()
        return self.settings.base_urls[self._node]

    @property
    def _vhost(self) -> str:
        return self.settings.quoted_vhost

    def queues(self) -> list[dict[str, Any]]:
        """Every queue of the vhost, with arguments, depth and consumers."""
        result: list[dict[str, Any]] = self.get(f"queues/{self._vhost}")
        return result

    def queue(self, name: str) -> dict[str, Any]:
        """One queue of the vhost."""
        result: dict[str, Any] = self.get(f"queues/{self._vhost}/{quote(name, safe='')}")
        return result

    def exchanges(self) -> list[dict[str, Any]]:
        """Every exchange of the vhost."""
        result: list[dict[str, Any]] = self.get(f"exchanges/{self._vhost}")
        return result

    def bindings(self) -> list[dict[str, Any]]:
        """Every binding of the vhost."""
        result: list[dict[str, Any]] = self.get(f"bindings/{self._vhost}")
        return result

    def consumers(self) -> list[dict[str, Any]]:
        """Every consumer of the vhost, with its prefetch count and queue."""
        result: list[dict[str, Any]] = self.get(f"consumers/{self._vhost}")
        return result

    def policies(self) -> list[dict[str, Any]]:
        """Every policy of the vhost."""
        result: list[dict[str, Any]] = self.get(f"policies/{self._vhost}")
        return result

    def put_policy(self, name: str, body: dict[str, Any]) -> None:
        """Create or replace policy ``name`` in the vhost."""
        self.request("PUT", f"policies/{self._vhost}/{quote(name, safe='')}", body)

    def delete_policy(self, name: str) -> None:
        """Delete policy ``name`` from the vhost."""
        self.request("DELETE", f"policies/{self._vhost}/{quote(name, safe='')}")

    def create_vhost(self, name: str) -> None:
        """Create vhost ``name`` and give this API user full permissions on it."""
        vhost = quote(name, safe="")
        self.request("PUT", f"vhosts/{vhost}", {})
        self.request(
            "PUT",
            f"permissions/{vhost}/{quote(self.settings.username, safe='')}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )

    def delete_vhost(self, name: str) -> None:
        """Delete vhost ``name`` and everything in it."""
        self.request("DELETE", f"vhosts/{quote(name, safe='')}")
