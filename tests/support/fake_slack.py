"""A real HTTP server on localhost that answers like Slack, scripted per test.

Incoming webhooks (any path) answer ``200 ok`` by default; ``/api/chat.postMessage`` answers
``{"ok": true, ...}`` when the bearer token matches. ``script(path, Reply(...), ...)`` queues
answers for a path (429 with Retry-After, 5xx, 404, ``{"ok": false, "error": ...}``); once they
are used up the default answer comes back. Every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_PATH = "/api/chat.postMessage"
WEBHOOK_PATH = "/services/T0000TEST/B0000TEST/s3cr3tW3bh00kT0k3n"


@dataclass
class Reply:
    status: int = 200
    body: str | dict[str, Any] = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test) breaks the pipe; that is the point of the test.
        pass


class FakeSlack:
    def __init__(self, token: str = "xoxb-test-0000-s3cr3tb0tt0k3n") -> None:
        self.token = token
        self.requests: list[Request] = []
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def allowed_host(self) -> str:
        """This server's entry in ``ORCHESTRATOR["WEBHOOK_ALLOWED_HOSTS"]``: loopback host and
        port, the only way a plain-http webhook URL is accepted."""
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def worker_env(self) -> dict[str, str]:
        """Environment that lists this server in a worker subprocess's allowed hosts (read by
        tests/settings.py) and points its Web API at it."""
        return {
            "ORCHESTRATOR_WEBHOOK_ALLOWED_HOSTS": self.allowed_host,
            "ORCHESTRATOR_SLACK_API_URL": self.api_url,
        }

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def webhook_url(self, path: str = WEBHOOK_PATH) -> str:
        return f"{self.url}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path].extend(replies)

    def received(self, path: str | None = None, status: int | None = None) -> list[Request]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (path is None or r.path == path) and (status is None or r.status == status)
            ]

    def delivered(self, path: str | None = None) -> list[Request]:
        """Requests that Slack would have accepted (answered 200 ok)."""
        return self.received(path, status=200)

    def default_reply(self, path: str, headers: dict[str, str]) -> Reply:
        if path.startswith("/api/"):
            if headers.get("authorization") != f"Bearer {self.token}":
                return Reply(200, {"ok": False, "error": "invalid_auth"})
            return Reply(200, {"ok": True, "channel": "C0TEST", "ts": f"{time.time():.6f}"})
        return Reply(200, "ok")

    def _next(self, path: str, headers: dict[str, str]) -> Reply:
        with self._lock:
            queue = self._scripts.get(path)
            if queue:
                return queue.popleft()
        return self.default_reply(path, headers)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = fake._next(self.path, headers)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = reply.body
                raw = (json.dumps(payload) if isinstance(payload, dict) else payload).encode()
                with fake._lock:
                    fake.requests.append(Request(self.path, headers, body, reply.status))
                self.send_response(reply.status)
                content_type = "application/json" if isinstance(payload, dict) else "text/html"
                self.send_header("Content-Type", f"{content_type}; charset=utf-8")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
