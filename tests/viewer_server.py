"""The viewer's web server for the browser test, as the cluster's nginx does it (k8s/components/viewer/default.conf):
OHIF's prebuilt files, the deployed ``app-config.js``, and ``/dicom-web`` and ``/wado`` forwarded to the archive
with the Host header unchanged (Orthanc builds its BulkDataURI links from it): one origin, so no CORS.

``TlsFront`` is the same forwarding for every path behind HTTPS: the reverse proxy a hospital puts in front of its
archive, with a certificate of its own CA (Debian's Orthanc resets HTTPS connections here)."""

from __future__ import annotations

import http.client
import mimetypes
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

FORWARDED = ("/dicom-web", "/wado")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate"}
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("application/javascript", ".js")


class ViewerServer:
    """Serves ``dist`` (with ``app_config`` as /app-config.js) on 127.0.0.1 and forwards the archive paths to
    ``archive`` (``http://host:port``)."""

    scheme = "http"

    def __init__(self, dist: Path | None, app_config: Path | None, archive: str):
        upstream = urlsplit(archive)
        handler = type("Handler", (_Handler,), {"dist": Path(dist).resolve() if dist else None,
                                                 "app_config": app_config,
                                                 "upstream": (upstream.hostname, upstream.port)})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="viewer-server", daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ViewerServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TlsFront(ViewerServer):
    """Every request to ``archive``, over HTTPS with ``certificate`` and ``key`` (PEM files)."""

    scheme = "https"

    def __init__(self, archive: str, certificate: Path, key: Path):
        super().__init__(None, None, archive)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)


class _Handler(BaseHTTPRequestHandler):
    dist: Path | None  # None: forward every path
    app_config: Path | None
    upstream: tuple[str, int]

    def log_message(self, format: str, *args) -> None:
        pass  # the test reports what matters; a line per frame would drown it

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        if self.dist is None or self.path.startswith(FORWARDED):
            self._forward()
        else:
            self._static()

    def _static(self) -> None:
        path = urlsplit(self.path).path
        if path == "/app-config.js":
            target = self.app_config
        else:
            target = (self.dist / path.lstrip("/")).resolve()
            # A single-page app: any other path (/viewer, /segmentation) is index.html.
            if not target.is_file() or self.dist not in target.parents:
                target = self.dist / "index.html"
        body = target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", mimetypes.guess_type(target.name)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}  # Host kept as it is
        connection = http.client.HTTPConnection(*self.upstream, timeout=300)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Connection", "close")
            self.end_headers()
            while chunk := response.read(1 << 16):
                self.wfile.write(chunk)
        finally:
            connection.close()
        self.close_connection = True
