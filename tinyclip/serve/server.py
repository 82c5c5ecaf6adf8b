"""The HTTP side: the standard library's threaded server, JSON endpoints and the one static page.

Why ``http.server``: the page needs five small endpoints on the loopback address for one user, which
the standard library does in a hundred lines with no new dependency to install, pin or audit; a
framework would add routing sugar, not anything the page uses. Requests run in threads (thumbnails
load in parallel); questions to the model take the engine's lock.

    GET  /                      the page (tinyclip/static/index.html); /static/NAME its script and style
    GET  /api/info              the run's facts, the collection's size, the modality classes
    GET  /api/search?q=…&k=…    text → the top k images
    GET  /api/image/ID?k=…      image → its top k captions, the true one marked; its modality
    GET  /api/thumb/ID          the image as PNG, from the decoded images in memory
    GET  /api/random            a random image id
    POST /api/classify?k=…      body: the bytes of a JPEG/PNG → modality probabilities, nearest captions

Nothing is read from disk by name from a request: the static files are a fixed table made at start and
images are looked up by id in the collection, so no path in a URL can reach another file. Every error,
the server's own included, is a JSON object ``{"error": ..., "status": ...}``, never an HTML page.
"""

from __future__ import annotations

import json
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from .engine import ApiError

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png"}
DRAIN_FACTOR = 4  # a too-large upload up to this many times the limit is read and dropped, so the client sees the 413


def static_files() -> dict:
    """``{name: (bytes, content type)}`` of the page's files, read once."""
    return {p.name: (p.read_bytes(), CONTENT_TYPES[p.suffix]) for p in sorted(STATIC_DIR.iterdir())
            if p.is_file() and p.suffix in CONTENT_TYPES}


class Handler(BaseHTTPRequestHandler):
    server_version = "tinyclip"
    protocol_version = "HTTP/1.1"  # keep-alive: the page's many thumbnails share connections

    # ----- routing -----------------------------------------------------------
    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def _get(self, path: str, params: dict):
        engine = self.server.engine
        if path in ("/", "/index.html"):
            return self._static("index.html")
        if path.startswith("/static/"):
            return self._static(unquote(path[len("/static/"):]))
        if path == "/api/info":
            return self._json(engine.info())
        if path == "/api/search":
            return self._json(engine.search(params.get("q"), params.get("k")))
        if path.startswith("/api/image/"):
            return self._json(engine.image(unquote(path[len("/api/image/"):]), params.get("k")))
        if path.startswith("/api/thumb/"):
            return self._send(200, engine.thumbnail(unquote(path[len("/api/thumb/"):])), "image/png",
                              cache="max-age=3600")
        if path == "/api/random":
            return self._json(engine.random_id(self.server.rng))
        raise ApiError(404, f"no such page or endpoint: {path}")

    def _post(self, path: str, params: dict):
        if path != "/api/classify":
            raise ApiError(404 if path.startswith("/api/") else 405, f"POST is only for /api/classify, not {path}")
        return self._json(self.server.engine.classify_upload(self._body(), params.get("k")))

    # ----- request and response ----------------------------------------------
    def _answer(self, route):
        try:
            url = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            route(url.path, params)
        except ApiError as e:
            self._json(e.to_json(), e.status)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the browser went away
        except Exception as e:  # a bug: one line on the console and a JSON 500, never a traceback page
            print(f"tinyclip.serve: internal error on {self.command} {self.path}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            self._json({"error": f"internal error: {type(e).__name__}: {e}", "status": 500}, 500)

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise ApiError(411, "the upload needs a Content-Length header")
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise ApiError(400, f"bad Content-Length {length!r}") from None
        limit = self.server.engine.max_upload_bytes
        if length > limit:
            if length <= DRAIN_FACTOR * limit:
                self._drain(length)
            else:
                self.close_connection = True
            raise ApiError(413, f"the upload is {length:,} bytes; at most {limit:,} (a JPEG or PNG file)")
        return self.rfile.read(length)

    def _drain(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def _static(self, name: str):
        if name not in self.server.static:
            raise ApiError(404, f"no such file: {name}")
        body, kind = self.server.static[name]
        self._send(200, body, kind, cache="no-cache")

    def _json(self, value, status: int = 200):
        self._send(status, json.dumps(value, allow_nan=False).encode(), "application/json; charset=utf-8")

    def _send(self, status: int, body: bytes, kind: str, cache: str = "no-store"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        """Protocol errors found by ``http.server`` itself (bad request line, unknown method): JSON too."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.close_connection = True
        self._json({"error": message or phrase, "status": code}, code)

    def log_message(self, format, *args):
        pass  # quiet: one line per thumbnail would bury the URL; errors of the server itself are printed


def make_server(engine, host: str = "127.0.0.1", port: int = 8000, seed: int = 0) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (0: a free port; see ``server.server_address``), not yet serving."""
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.engine, server.static, server.rng = engine, static_files(), np.random.default_rng(seed)
    return server
