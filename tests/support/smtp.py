"""A real SMTP server on localhost (aiosmtpd) that keeps what it receives."""

from __future__ import annotations

import email
import email.policy
import socket
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    # aiosmtpd's Controller(port=0) fails: ask the OS for a port, then hand it over.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore[return-value]

    def part(self, content_type: str) -> str:
        for part in self.message.walk():
            if part.get_content_type() == content_type:
                return part.get_content()
        raise LookupError(content_type)


class _Handler:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.server.refuse:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.server.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        )
        return "250 Message accepted for delivery"


class SMTPServer:
    """``SMTPServer(credentials=("user", "password"))`` offers AUTH (over plain text: it is
    localhost) and accepts only those credentials; without them it needs none."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.messages: list[Received] = []
        self.refuse: set[str] = set()
        self.logins: list[str] = []
        self.credentials = credentials
        self.port = free_port()
        self.host = "127.0.0.1"
        auth: dict[str, Any] = {}
        if credentials is not None:
            auth = {"authenticator": self._authenticate, "auth_require_tls": False}
        self.controller = Controller(_Handler(self), hostname=self.host, port=self.port, **auth)
        self.controller.start()

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and self.credentials is not None:
            login, password = auth_data.login.decode(), auth_data.password.decode()
            if (login, password) == self.credentials:
                self.logins.append(login)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def settings(self) -> dict[str, Any]:
        """Django settings that send through this server."""
        return {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": self.host,
            "EMAIL_PORT": self.port,
            "EMAIL_USE_TLS": False,
            "EMAIL_USE_SSL": False,
        }

    def env(self) -> dict[str, str]:
        """Environment for a worker subprocess (tests/settings.py reads these)."""
        env = {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": self.host,
            "EMAIL_PORT": str(self.port),
        }
        if self.credentials is not None:
            env["EMAIL_HOST_USER"], env["EMAIL_HOST_PASSWORD"] = self.credentials
        return env

    def close(self) -> None:
        self.controller.stop()
