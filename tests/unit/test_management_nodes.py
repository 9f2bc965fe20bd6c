"""The management client over a cluster's APIs (tradebus/management.py): a node that takes no connection is
skipped, a request lost midway is sent to another node only when repeating it is harmless. Local HTTP
servers stand in for the nodes' APIs (no broker)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tradebus.errors import BrokerUnreachable
from tradebus.management import Management
from tradebus.settings import ManagementSettings


class Node(BaseHTTPRequestHandler):
    """A node's API: answers every request with the path it was asked, or drops the connection unanswered
    when the server is ``dropping``."""

    def handle_one_request(self) -> None:
        if getattr(self.server, "dropping", False):
            self.rfile.readline()
            self.connection.shutdown(socket.SHUT_RDWR)  # the node dies with the request in hand
            self.close_connection = True
            return
        super().handle_one_request()

    def answer(self) -> None:
        self.server.asked.append((self.command, self.path))  # type: ignore[attr-defined]
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_DELETE = answer  # noqa: N815 - http.server's names

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def nodes() -> Iterator[list[ThreadingHTTPServer]]:
    servers = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Node)
        server.asked = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api(*ports: int) -> Management:
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    return Management(ManagementSettings(urls[0], "u", "p", "v", tuple(urls[1:])), timeout=5)


def test_a_node_that_takes_no_connection_is_skipped_and_the_one_that_answered_is_asked_first(
    nodes: list[ThreadingHTTPServer],
) -> None:
    live = nodes[0].server_address[1]
    management = api(closed_port(), live)
    assert management.get("overview") == {"path": "/api/overview"}
    assert management.answering() == f"http://127.0.0.1:{live}"
    management.request("DELETE", "vhosts/x")  # asked where the last answer came from: nothing refused
    assert nodes[0].asked == [("GET", "/api/overview"), ("GET", "/api/overview"), ("DELETE", "/api/vhosts/x")]
    with pytest.raises(BrokerUnreachable):  # positive control: no node answers
        api(closed_port(), closed_port()).get("overview")


def test_a_request_lost_midway_goes_to_another_node_only_when_it_can_be_repeated(
    nodes: list[ThreadingHTTPServer],
) -> None:
    dying, live = nodes
    dying.dropping = True  # type: ignore[attr-defined]
    management = api(dying.server_address[1], live.server_address[1])
    assert management.get("queues/v") == {"path": "/api/queues/v"}  # a read is repeated elsewhere
    assert live.asked == [("GET", "/api/queues/v")]
    management = api(dying.server_address[1], live.server_address[1])
    with pytest.raises(BrokerUnreachable):
        management.request("DELETE", "vhosts/v")  # it may have been carried out: not sent again
    assert live.asked == [("GET", "/api/queues/v")]


def test_flower_is_given_the_first_management_api_that_answers(nodes: list[ThreadingHTTPServer]) -> None:
    from tradebus.ops.flower import broker_api
    from tradebus.settings import Settings

    def flower_api(*ports: int) -> str | None:
        return broker_api(
            Settings.from_env(
                {
                    "TRADEBUS_BROKER_URL": "amqp://u:p@127.0.0.1:5681/v;amqp://u:p@127.0.0.1:5682/v",
                    "TRADEBUS_MANAGEMENT_URL": ";".join(f"http://127.0.0.1:{port}" for port in ports),
                }
            )
        )

    first, second = (server.server_address[1] for server in nodes)
    assert flower_api(closed_port(), second) == f"http://u:p@127.0.0.1:{second}/api/"
    assert flower_api(first, second) == f"http://u:p@127.0.0.1:{first}/api/"  # both answer: the first


def test_flowers_broker_view_moves_to_a_node_that_answers_when_its_own_dies(
    nodes: list[ThreadingHTTPServer],
) -> None:
    from types import SimpleNamespace

    from tradebus.ops.flower import recheck
    from tradebus.settings import Settings

    first, second = (server.server_address[1] for server in nodes)
    dead = closed_port()
    settings = Settings.from_env(
        {
            "TRADEBUS_BROKER_URL": "amqp://u:p@127.0.0.1:5681/v;amqp://u:p@127.0.0.1:5682/v",
            "TRADEBUS_MANAGEMENT_URL": f"http://127.0.0.1:{dead};http://127.0.0.1:{second}",
        }
    )
    options = SimpleNamespace(broker_api=f"http://u:p@127.0.0.1:{first}/api/")
    assert recheck(options, settings) is None  # positive control: its node answers, it stays
    assert options.broker_api == f"http://u:p@127.0.0.1:{first}/api/"
    options.broker_api = f"http://u:p@127.0.0.1:{dead}/api/"  # its node died
    assert recheck(options, settings) == f"http://u:p@127.0.0.1:{second}/api/"
    assert options.broker_api == f"http://u:p@127.0.0.1:{second}/api/"
