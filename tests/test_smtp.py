"""Notification e-mail: the SMTP_URL credentials go only over TLS (or to this machine)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from webhooks import notifications, services
from webhooks.config import Settings, load


def outward_address() -> str:
    """This machine's address on its network (not loopback), where an SMTP server can listen."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("8.8.8.8", 53))  # no packet is sent; this only picks the route
        except OSError:
            pytest.skip("this machine has no address besides loopback")
        return probe.getsockname()[0]


class SmtpServer:
    """A real SMTP server (aiosmtpd) that accepts any login and records how it came."""

    def __init__(self, host: str, *, starttls: ssl.SSLContext | None = None, **kw: Any) -> None:
        self.logins: list[tuple[str, str, bool]] = []  # (user, password, over TLS)
        self.messages: list[Any] = []
        self._arrived = threading.Condition()
        with socket.socket() as sock:
            sock.bind((host, 0))
            self.port = sock.getsockname()[1]
        self.host = host
        self.controller = Controller(
            self,
            hostname=host,
            port=self.port,
            authenticator=self._authenticate,
            auth_require_tls=False,  # offer AUTH in clear: the client must decline it
            tls_context=starttls,
            **kw,
        )
        self.controller.start()

    def url(self, scheme: str = "smtp", credentials: str = "mailer:s3cret%21") -> str:
        userinfo = f"{credentials}@" if credentials else ""
        return f"{scheme}://{userinfo}{self.host}:{self.port}"

    def _authenticate(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        over_tls = session.ssl is not None or server.transport.get_extra_info("sslcontext")
        login = (auth_data.login.decode(), auth_data.password.decode(), bool(over_tls))
        self.logins.append(login)
        return AuthResult(success=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self._arrived:
            self.messages.append(message_from_bytes(envelope.original_content, policy=default))
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    def close(self) -> None:
        self.controller.stop()


@pytest.fixture
def trust_test_ca(ca_bundle, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The system's trust store, as far as SMTP's TLS is concerned, is the test CA."""
    monkeypatch.setenv("SSL_CERT_FILE", ca_bundle)


def server_context(ca: trustme.CA, address: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(address).configure_cert(context)
    return context


def settings_for(smtp_url: str) -> Settings:
    values = load({}, {"SMTP_URL": smtp_url, "NOTIFY_FROM": "webhooks@acme.test"})
    return Settings.from_config(values)


def send(smtp_url: str) -> str | None:
    return notifications.send_email(
        settings_for(smtp_url), ["ops@acme.test"], "Webhook “Ops” was disabled", "Body\n"
    )


@pytest.fixture
def plain_server() -> Iterator[SmtpServer]:
    """A server on the network that offers no STARTTLS, as one whose answer was stripped."""
    server = SmtpServer(outward_address())
    yield server
    server.close()


def test_credentials_are_not_sent_to_a_server_without_starttls(plain_server):
    error = send(plain_server.url())

    assert error == (
        f"the SMTP server {plain_server.host}:{plain_server.port} offers no STARTTLS, so the "
        "credentials in SMTP_URL were not sent; use a server that offers STARTTLS, or smtps://"
    )
    assert plain_server.logins == [] and plain_server.messages == []


def test_credentials_go_after_starttls(ca, trust_test_ca):  # type: ignore[no-untyped-def]
    address = outward_address()
    server = SmtpServer(address, starttls=server_context(ca, address))
    try:
        error = send(server.url())
    finally:
        server.close()

    assert error is None
    assert server.logins == [("mailer", "s3cret!", True)]
    assert [str(m["Subject"]) for m in server.messages] == ["Webhook “Ops” was disabled"]


def test_credentials_go_over_smtps(ca, trust_test_ca):  # type: ignore[no-untyped-def]
    address = outward_address()
    context = server_context(ca, address)
    server = SmtpServer(address, ssl_context=context, server_hostname=address)
    try:
        error = send(server.url("smtps"))
    finally:
        server.close()

    assert error is None
    assert server.logins == [("mailer", "s3cret!", True)]
    assert len(server.messages) == 1


def test_a_server_on_loopback_may_take_credentials_in_clear():
    server = SmtpServer("127.0.0.1")
    try:
        error = send(server.url())
    finally:
        server.close()

    assert error is None
    assert server.logins == [("mailer", "s3cret!", False)]
    assert len(server.messages) == 1


def test_without_credentials_a_server_without_starttls_still_gets_the_mail(plain_server):
    assert send(plain_server.url(credentials="")) is None
    assert plain_server.logins == [] and len(plain_server.messages) == 1


def test_the_refusal_shows_on_the_notification(app, api, workspace, plain_server):  # type: ignore[no-untyped-def]
    from webhooks.models import Notification, db

    services.reconfigure(app, SMTP_URL=plain_server.url())
    response = api.put("/notifications", {"emails": ["ops@acme.test"], "alert_url": None})
    assert response.status_code == 200, response.json
    settings = Settings.from_config(app.config)

    with app.app_context():
        [notification_id] = notifications.send_test(db.session, workspace["id"], settings)
        status = notifications.send(db.session, notification_id, 0, settings)
        error = db.session.get(Notification, notification_id).error  # type: ignore[union-attr]

    assert status == "failed"
    assert error is not None and "offers no STARTTLS, so the credentials" in error
    assert "s3cret" not in error
    assert plain_server.logins == [] and plain_server.messages == []
