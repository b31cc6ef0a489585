"""A real origin server on 127.0.0.1 for the tests of sources by URL: images, and every way an origin can fail.

    with OriginServer({"/cat.png": png_bytes}) as origin:
        origin.url("/cat.png"), origin.url("/slow"), origin.url("/redirect?to=http://10.0.0.1/x"), ...

Paths: a file given to it (200, image/png unless the name ends in .txt), /slow (headers after 3 s),
/endless (image/png, bytes until the client leaves), /liar (Content-Length 100000, then 1000 bytes and
close), /status/CODE, /redirect?to=URL (302), /loop (redirects to itself). Each request's path and
Host header are recorded in `seen`.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class OriginHandler(BaseHTTPRequestHandler):
    server: OriginHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def send(self, status: int, body: bytes, content_type: str = "image/png", length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = urlsplit(self.path)
        self.server.seen.append((self.path, self.headers.get("Host", "")))
        if parts.path in self.server.files:
            body = self.server.files[parts.path]
            self.send(200, body, "text/plain" if parts.path.endswith(".txt") else "image/png")
        elif parts.path == "/slow":
            time.sleep(3)
            self.send(200, b"late")
        elif parts.path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                return
        elif parts.path == "/liar":
            self.send(200, b"\x89PNG" + b"\0" * 996, length=100_000)
            self.close_connection = True
        elif parts.path.startswith("/status/"):
            self.send(int(parts.path.rsplit("/", 1)[1]), b"no", "text/plain")
        elif parts.path == "/redirect":
            self.redirect(parse_qs(parts.query)["to"][0])
        elif parts.path == "/loop":
            self.redirect("/loop")
        else:
            self.send(404, b"no such file", "text/plain")

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class OriginHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, bytes]
    seen: list[tuple[str, str]]


class OriginServer:
    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.httpd = OriginHTTPServer(("127.0.0.1", 0), OriginHandler)
        self.httpd.files = dict(files or {})
        self.httpd.seen = []
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def files(self) -> dict[str, bytes]:
        return self.httpd.files

    @property
    def seen(self) -> list[tuple[str, str]]:
        return self.httpd.seen

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> OriginServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
