"""A TLS listener on loopback for the TLS tests: certificates made with ``openssl``, and a TLS-terminating
proxy in front of a plain port (RabbitMQ's AMQP or management port), so the shared broker is never
reconfigured. Bounded: every thread is a daemon and ``close`` ends them.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate it signed (for localhost and 127.0.0.1), and a CA that signed nothing."""

    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", str(key), "-out", str(cert), "-subj", f"/CN=tradebus test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return key, cert


def make_certificates(directory: Path) -> Certificates:
    """Create the test PKI in ``directory``."""
    ca_key, ca = _ca(directory, "ca")
    _, other_ca = _ca(directory, "other-ca")
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    extensions = directory / "server.ext"
    extensions.write_text(
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=localhost", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "1", "-out", str(cert), "-extfile", str(extensions), cwd=directory)  # fmt: skip
    return Certificates(ca, cert, key, other_ca)


class TLSProxy:
    """Accepts TLS on 127.0.0.1:<port> and forwards the decrypted bytes to 127.0.0.1:``target``."""

    def __init__(self, certificates: Certificates, target: int) -> None:
        self.target = target
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certificates.server_cert, certificates.server_key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.handshakes = 0
        self.failed_handshakes = 0
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(10)
            secure = self.context.wrap_socket(client, server_side=True)
            secure.settimeout(None)
        except (ssl.SSLError, OSError):
            self.failed_handshakes += 1
            client.close()
            return
        self.handshakes += 1
        upstream = socket.create_connection(("127.0.0.1", self.target))
        self._sockets += [secure, upstream]
        threading.Thread(target=self._pump, args=(secure, upstream), daemon=True).start()
        self._pump(upstream, secure)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting and cut every forwarded connection."""
        self._closed.set()
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
