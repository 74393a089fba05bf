"""A real SMTP server on loopback (aiosmtpd): it keeps every message it is given."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from typing import Any

from aiosmtpd.controller import Controller

from tests.receivers import wait_for_count


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage
    at: float

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        return self.message.get_content()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mailbox:
    """`url` is what SMTP_URL should say; `wait_for(n)` blocks until n messages arrived."""

    def __init__(self) -> None:
        self.messages: list[Mail] = []
        self._arrived = threading.Condition()
        self.port = free_port()
        self.url = f"smtp://127.0.0.1:{self.port}"
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = message_from_bytes(envelope.original_content or envelope.content, policy=default)
        with self._arrived:
            self.messages.append(
                Mail(envelope.mail_from, list(envelope.rcpt_tos), message, time.time())  # type: ignore[arg-type]
            )
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Mail]:
        return wait_for_count(self._arrived, self.messages, count, timeout, "e-mails")

    def close(self) -> None:
        self.controller.stop()
