"""A loopback registry as Artifact Registry's Docker host, ``<location>-docker.pkg.dev``, for skopeo.

With ``registry.host`` unset the tool reads and deletes images at ``us-central1-docker.pkg.dev`` (skopeo for
the Docker API, gcloud for Artifact Registry's REST API). :class:`DockerHost` makes that name reach a
loopback registry without touching DNS or the machine's trust store: skopeo (Go) sends every request
through ``HTTPS_PROXY``, here a proxy on 127.0.0.1 that accepts ``CONNECT`` to that one host only,
terminates TLS with a certificate for it signed by a CA made for the test run (``SSL_CERT_FILE``), and
relays to the registry's plain-http port. Anything else it is asked for is refused (403) and recorded in
``refused``: no request leaves the machine. Combine with ``GcpEmulator.serve_docker_images`` so the REST
API and the Docker API see one store, as in Artifact Registry.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import require_tool

LOOPBACK = "127.0.0.1"


def make_certificate(folder: Path, host: str) -> tuple[Path, Path, Path]:
    """(CA certificate, host certificate, host key) for ``host``, made with the openssl CLI."""
    openssl = require_tool("openssl", "apt-get install -y openssl")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt, ext = folder / "host.key", folder / "host.csr", folder / "host.crt", folder / "host.ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*argv: str) -> None:
        subprocess.run([openssl, *argv], check=True, capture_output=True, timeout=30)

    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "2",
        "-subj", "/CN=gptoss-gke loopback test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host}")
    ext.write_text(f"subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return ca_crt, crt, key


class DockerHost:
    """``host`` (e.g. ``us-central1-docker.pkg.dev``) answered by ``registry`` (a ``tests.registry.Registry``)."""

    def __init__(self, registry, host: str, certs: tuple[Path, Path, Path]):
        self.registry = registry
        self.host = host
        self.ca, crt, key = certs
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(str(crt), str(key))
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self.connects: list[str] = []  # each CONNECT served
        self.refused: list[str] = []  # request lines refused: anything but CONNECT to ``host``
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True, name=f"docker-host-{self.port}").start()

    def env(self) -> dict[str, str]:
        """What a process needs to reach ``host`` here: the proxy (https and http alike) and the CA."""
        proxy = f"http://{LOOPBACK}:{self.port}"
        return {"HTTPS_PROXY": proxy, "https_proxy": proxy, "HTTP_PROXY": proxy, "http_proxy": proxy,
                "SSL_CERT_FILE": str(self.ca)}

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        with self._lock:
            for sock in list(self._open):
                try:
                    sock.close()
                except OSError:
                    pass

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._open.add(sock)
        return sock

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(self._track(client),), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = client.recv(4096)
                if not data:
                    return
                head += data
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target = (line.split(" ") + ["", ""])[:2]
            if method != "CONNECT" or target != f"{self.host}:443":
                self.refused.append(line)
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            self.connects.append(target)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            tls = self._track(self._tls.wrap_socket(client, server_side=True))
            upstream = self._track(socket.create_connection((LOOPBACK, self.registry.port), timeout=30))
            pump = threading.Thread(target=self._pump, args=(upstream, tls), daemon=True)
            pump.start()
            self._pump(tls, upstream)
            pump.join(30)
        except (OSError, ssl.SSLError):
            pass
        finally:
            client.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture(scope="session")
def docker_host_certs(tmp_path_factory):
    """A CA and a certificate for ``us-central1-docker.pkg.dev``, made once per test run."""
    return make_certificate(tmp_path_factory.mktemp("pkgdev-tls"), "us-central1-docker.pkg.dev")


@pytest.fixture
def docker_hosts(docker_host_certs):
    """A factory: ``docker_hosts(registry)`` makes ``registry`` answer as ``us-central1-docker.pkg.dev``."""
    started: list[DockerHost] = []

    def start(registry) -> DockerHost:
        front = DockerHost(registry, "us-central1-docker.pkg.dev", docker_host_certs)
        started.append(front)
        return front

    try:
        yield start
    finally:
        for front in started:
            front.stop()
