"""A real SMTP server for the tests: aiosmtpd on a free 127.0.0.1 port.

Plain, STARTTLS (required) or implicit TLS, optionally with AUTH; keeps every
message it accepts, and can refuse chosen recipients with a given reply.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.conftest import free_port
from tests.pki import TestCA


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)


@dataclass
class Recorder:
    """The aiosmtpd handler: what arrived, and the replies to give to some recipients."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # address -> "550 5.1.1 ..."

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content))
        )
        return "250 Message accepted"


class SmtpServer:
    """``security`` is ``none``, ``starttls`` or ``ssl``; ``login``/``password`` enable AUTH."""

    def __init__(
        self,
        folder: Path,
        security: str = "none",
        login: str | None = None,
        password: str | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.security = security
        self.handler = Recorder()
        self.ca_file: Path | None = None
        self.auth_attempts: list[tuple[str, bool]] = []
        self._login, self._password = login, password
        context = self._tls_context(folder) if security != "none" else None
        kwargs = {}
        if login:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
            # aiosmtpd counts only STARTTLS as TLS (not implicit TLS) for AUTH
            kwargs["auth_require_tls"] = security == "starttls"
        if security == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            ssl_context=context if security == "ssl" else None,
            server_hostname="127.0.0.1",
            **kwargs,
        )

    def _tls_context(self, folder: Path) -> ssl.SSLContext:
        ca = TestCA("smtp test CA")
        server = ca.server("127.0.0.1")
        cert, key = server.write(folder, "smtp-server")
        self.ca_file = folder / "smtp-ca.pem"
        self.ca_file.write_bytes(ca.cert_pem())
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self._login
            and auth_data.password.decode() == self._password
        )
        self.auth_attempts.append((mechanism, ok))
        # handled=False: aiosmtpd answers 535 itself (with the default it answers nothing)
        return AuthResult(success=ok, handled=False)

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def settings(self) -> dict:
        """The email plugin settings that reach this server."""
        values = {
            "smtp_host": "127.0.0.1",
            "smtp_port": self.port,
            "security": self.security,
            "timeout_seconds": 10,
        }
        if self.ca_file:
            values["tls_ca_file"] = str(self.ca_file)
        if self._login:
            values.update(login=self._login, password=self._password)
        return values

    def start(self) -> SmtpServer:
        self.controller.start()
        self.running = True
        return self

    def stop(self) -> None:
        if getattr(self, "running", False):
            self.controller.stop()
            self.running = False

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.received)} mail(s) arrived, expected {count}")
            time.sleep(0.05)
        return self.received
