"""The egress guard: every address checked, in every spelling, at save time and at send time."""

from __future__ import annotations

import base64
import ipaddress
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from urllib3.util import connection as urllib3_connection

from tests.receivers import LOOPBACK, RawServer, Receiver, Reply, read_request, send
from webhooks import aiotransport, egress, services, transport

ONLY_127_0_0_1 = (ipaddress.ip_network("127.0.0.1/32"),)


# -- spelling ---------------------------------------------------------------------------------

SPELLINGS = [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),  # one decimal number
    ("0177.0.0.1", "127.0.0.1"),  # octal
    ("0x7f.0.0.1", "127.0.0.1"),  # hex
    ("0x7F000001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),  # shortened
    ("127.0.1", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),  # trailing dot
    ("10.0.0.1", "10.0.0.1"),
    ("0xa.0.0.1", "10.0.0.1"),
    ("167772161", "10.0.0.1"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("0xA9FEA9FE", "169.254.169.254"),
    ("0", "0.0.0.0"),
    ("0x", "0.0.0.0"),
    ("[::1]", "::1"),
    ("::1", "::1"),
    ("[0:0:0:0:0:0:0:1]", "::1"),
    ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ("[::ffff:7f00:1]", "::ffff:7f00:1"),
    ("64:ff9b::7f00:1", "64:ff9b::7f00:1"),
    ("2002:7f00:1::", "2002:7f00:1::"),
]


@pytest.mark.parametrize(("host", "expected"), SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_every_ip_spelling_is_read_as_the_address(host, expected):
    assert egress.parse_literal(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize(
    "host",
    ["example.com", "hooks.test", "1.2.3.4.5", "256.0.0.1", "1.2.3.256", "08.0.0.1", "0x1g.0.0.1"],
)
def test_names_and_impossible_numbers_are_not_literals(host):
    assert egress.parse_literal(host) is None


@pytest.mark.parametrize("host", ["fe80::1%eth0", "[fe80::1%25eth0]", "::1%lo"])
def test_zone_ids_are_refused(host):
    with pytest.raises(egress.TargetNotAllowed, match="zone id"):
        egress.parse_literal(host)


# -- classification ---------------------------------------------------------------------------

CLASSES = [
    # (address as a resolver returns it, class)
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("fd00::1", "private"),
    ("fc00::1", "private"),
    ("fec0::1", "private"),
    ("fd00:ec2::254", "private"),
    ("169.254.169.254", "link-local"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("100.64.0.1", "shared"),
    ("100.127.255.254", "shared"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("ff05::2", "multicast"),
    ("198.18.0.1", "benchmark"),
    ("198.19.255.254", "benchmark"),
    ("192.0.2.1", "reserved"),  # documentation
    ("198.51.100.1", "reserved"),
    ("203.0.113.1", "reserved"),
    ("2001:db8::1", "reserved"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("0.1.2.3", "reserved"),
    ("192.0.0.8", "reserved"),
    ("192.88.99.1", "reserved"),
    ("2001::1", "reserved"),  # Teredo
    ("100::1", "reserved"),
    ("5f00::1", "reserved"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    # IPv4 carried inside IPv6: the embedded address decides.
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:100.64.0.1", "shared"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("::127.0.0.1", "loopback"),  # IPv4-compatible
    ("::10.0.0.1", "private"),
    ("::8.8.8.8", "reserved"),  # deprecated form, never public
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a00:1", "private"),
    ("64:ff9b::a9fe:a9fe", "link-local"),
    ("64:ff9b:1::a00:1", "private"),  # local-use NAT64
    ("64:ff9b:1::808:808", "reserved"),
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a00:1::1", "private"),
    ("2002:c0a8:101::", "private"),
]

PUBLIC = ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"]
PUBLIC += ["64:ff9b::808:808", "2002:808:808::", "100.63.255.255", "100.128.0.0", "172.32.0.1"]


@pytest.mark.parametrize(("address", "reason"), CLASSES, ids=[c[0] for c in CLASSES])
def test_classify(address, reason):
    assert egress.classify(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    ip = ipaddress.ip_address(address)
    assert egress.classify(ip) is None
    assert egress.check(address, 443) == [ip]


@pytest.mark.parametrize(("address", "reason"), CLASSES, ids=[c[0] for c in CLASSES])
def test_a_literal_address_is_refused_naming_it(address, reason):
    with pytest.raises(egress.TargetNotAllowed) as refused:
        egress.check(address, 443)
    assert refused.value.reason == reason
    assert refused.value.address == address
    assert str(refused.value).startswith(f"{address} is a")
    assert f" {reason} address" in str(refused.value)


@pytest.mark.parametrize(("address", "reason"), CLASSES, ids=[c[0] for c in CLASSES])
def test_a_name_resolving_to_it_is_refused(dns, address, reason):
    dns["hooks.test"] = address
    with pytest.raises(egress.TargetNotAllowed) as refused:
        egress.check("hooks.test", 443)
    assert refused.value.reason == reason
    assert str(refused.value).startswith(f"hooks.test resolves to {ipaddress.ip_address(address)},")


@pytest.mark.parametrize(
    ("spelling", "message"),
    [
        ("2130706433", "2130706433 is 127.0.0.1, a loopback address"),
        ("0177.0.0.1", "0177.0.0.1 is 127.0.0.1, a loopback address"),
        ("0x7f.0.0.1", "0x7f.0.0.1 is 127.0.0.1, a loopback address"),
        ("127.1", "127.1 is 127.0.0.1, a loopback address"),
        ("0xA9FEA9FE", "0xA9FEA9FE is 169.254.169.254, a link-local address (cloud metadata)"),
        ("0", "0 is 0.0.0.0, an unspecified address"),
        ("[::1]", "::1 is a loopback address"),
        ("[::ffff:10.0.0.1]", "::ffff:10.0.0.1 is a private address (IPv4-mapped 10.0.0.1)"),
        ("64:ff9b::7f00:1", "64:ff9b::7f00:1 is a loopback address (NAT64 127.0.0.1)"),
        ("2002:7f00:1::", "2002:7f00:1:: is a loopback address (6to4 127.0.0.1)"),
    ],
)
def test_every_spelling_is_refused_with_a_readable_message(spelling, message):
    with pytest.raises(egress.TargetNotAllowed) as refused:
        egress.check(spelling, 443)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("address", "allowed", "verdict"),
    [
        ("10.0.0.1", "10.0.0.0/8", None),
        ("10.0.0.1", "10.0.0.1/32", None),
        ("10.0.0.2", "10.0.0.1/32", "private"),
        ("::ffff:10.0.0.1", "10.0.0.0/8", None),  # the mapped form reaches the same address
        ("127.0.0.1", "127.0.0.1/32", None),
        ("127.0.0.2", "127.0.0.1/32", "loopback"),
        ("169.254.169.254", "10.0.0.0/8", "link-local"),
        ("fd00::1", "fd00::/8", None),
        ("100.64.0.1", "100.64.0.0/10", None),
    ],
)
def test_allowed_networks_win(address, allowed, verdict):
    networks = (ipaddress.ip_network(allowed),)
    assert egress.classify(ipaddress.ip_address(address), networks) == verdict


# -- every address ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "addresses",
    [
        ["93.184.216.34", "10.0.0.1"],
        ["10.0.0.1", "93.184.216.34"],
        ["2606:4700::1111", "93.184.216.34", "::ffff:10.0.0.1"],
    ],
)
def test_one_private_address_among_public_ones_refuses_the_name(dns, addresses):
    dns["mixed.test"] = addresses
    with pytest.raises(egress.TargetNotAllowed) as refused:
        egress.check("mixed.test", 443)
    assert refused.value.reason == "private"
    assert "mixed.test resolves to" in str(refused.value)


def test_all_addresses_are_returned_when_all_are_allowed(dns):
    dns["both.test"] = ["93.184.216.34", "2606:4700::1111", "93.184.216.34"]
    assert egress.check("both.test", 443) == [
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("2606:4700::1111"),
    ]


def test_a_name_that_does_not_resolve_raises_gaierror(dns):
    with pytest.raises(socket.gaierror):
        egress.check("nowhere.test", 443)


def settings(allowed: str = "", allow_http: bool = False) -> Any:
    networks = tuple(ipaddress.ip_network(n) for n in allowed.split(",") if n)
    return SimpleNamespace(allowed_private_networks=networks, allow_http=allow_http)


def test_save_time_check_of_urls(dns):
    dns["hooks.test"] = ["93.184.216.34"]
    dns["internal.test"] = ["10.1.2.3"]
    assert egress.check_url("https://hooks.test/x", settings()) is None
    assert egress.check_url("https://93.184.216.34/x", settings()) is None
    with pytest.raises(egress.TargetNotAllowed, match="internal.test resolves to 10.1.2.3, a pri"):
        egress.check_url("https://internal.test/x", settings())
    assert egress.check_url("https://internal.test/x", settings("10.0.0.0/8")) is None
    # Literals are refused at once, even without resolving names.
    with pytest.raises(egress.TargetNotAllowed, match="10.0.0.1 is a private address"):
        egress.check_url("https://10.0.0.1/x", settings(), resolve_names=False)
    assert egress.check_url("https://internal.test/x", settings(), resolve_names=False) is None
    # A name that does not resolve yet is accepted with a warning.
    warning = egress.check_url("https://later.test/x", settings())
    assert warning and "later.test does not resolve yet" in warning


def test_scheme_is_checked_too():
    with pytest.raises(egress.TargetNotAllowed, match="http:// targets are not allowed"):
        egress.check_target("http://93.184.216.34/", ())
    target = egress.check_target("http://93.184.216.34/", (), allow_http=True)
    assert (target.scheme, target.port) == ("http", 80)


# -- send time: the connection goes to the checked address ------------------------------------


@pytest.fixture
def connects(monkeypatch) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """Every outbound connection the transport opens, as (address, port)."""
    opened: list[tuple[str, int]] = []
    real = urllib3_connection.create_connection

    def record(address, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append((address[0], address[1]))
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3_connection, "create_connection", record)
    # The worker's POSTs on its event loop open their connections through one function.
    start = aiotransport._connect

    async def record_aio(factory, host, port, **kwargs):  # type: ignore[no-untyped-def]
        opened.append((host, port))
        return await start(factory, host, port, **kwargs)

    monkeypatch.setattr(aiotransport, "_connect", record_aio)
    return opened


@pytest.fixture
def named_receiver(ca: trustme.CA) -> Iterator[Receiver]:
    """An HTTPS receiver on 127.0.0.1 whose certificate is for hooks.test alone."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.test").configure_cert(context)
    server = Receiver(tls=context)
    yield server
    server.close()


def test_connects_to_the_checked_address_with_the_name_for_tls_and_host(
    dns, named_receiver, ca_bundle, connects
):
    dns["hooks.test"] = "127.0.0.1"  # the system's resolver knows no hooks.test
    result = send(named_receiver.url(host="hooks.test"), ca_bundle)

    assert result.ok, result.error  # the certificate for hooks.test was checked (SNI) and taken
    assert connects == [("127.0.0.1", named_receiver.port)]
    assert named_receiver.requests[0].headers["Host"] == f"hooks.test:{named_receiver.port}"


def test_refused_target_makes_no_connection(dns, receiver, ca_bundle, connects):
    dns["localhost"] = "127.0.0.2"
    result = send(receiver.url(host="localhost"), ca_bundle, allowed_networks=ONLY_127_0_0_1)
    assert not result.ok and result.status_code is None
    assert result.error == "target not allowed: localhost resolves to 127.0.0.2, a loopback address"

    result = send(receiver.url(host="127.0.0.2"), ca_bundle, allowed_networks=ONLY_127_0_0_1)
    assert result.error == "target not allowed: 127.0.0.2 is a loopback address"

    result = send("https://169.254.169.254/latest/meta-data/", ca_bundle)
    assert result.error == (
        "target not allowed: 169.254.169.254 is a link-local address (cloud metadata)"
    )
    assert connects == [] and receiver.requests == []


def test_http_is_refused_at_send_time_unless_allowed(ca_bundle, connects):
    plain = Receiver()
    try:
        refused = send(plain.url(), ca_bundle)
        assert (
            refused.error == "target not allowed: http:// targets are not allowed (https:// only)"
        )
        assert connects == [] and plain.requests == []
        assert send(plain.url(), ca_bundle, allow_http=True).ok
    finally:
        plain.close()


def test_a_name_that_stopped_resolving_fails_readably(dns, ca_bundle, connects):
    result = send("https://gone.test/hook", ca_bundle)
    assert result.error == "the host name does not resolve" and connects == []


def test_a_kept_alive_connection_is_not_reused_once_the_name_moves(
    dns, named_receiver, ca_bundle, connects
):
    url = named_receiver.url(host="hooks.test")
    dns["hooks.test"] = "127.0.0.1"
    assert send(url, ca_bundle).ok
    assert send(url, ca_bundle).ok  # kept alive: no new connection
    assert connects == [("127.0.0.1", named_receiver.port)]

    dns["hooks.test"] = "127.0.0.3"  # allowed, but nothing listens there
    moved = send(url, ca_bundle)

    assert moved.error == "connection refused"
    assert connects[-1] == ("127.0.0.3", named_receiver.port)
    assert len(named_receiver.requests) == 2


def test_the_next_checked_address_is_tried_when_one_refuses(
    dns, named_receiver, ca_bundle, connects
):
    dns["hooks.test"] = ["127.0.0.3", "127.0.0.1"]
    assert send(named_receiver.url(host="hooks.test"), ca_bundle).ok
    assert connects == [("127.0.0.3", named_receiver.port), ("127.0.0.1", named_receiver.port)]


def test_the_target_is_checked_even_through_a_proxy(dns, ca_bundle, connects):
    dns["internal.test"] = "10.1.2.3"
    result = send("https://internal.test/", ca_bundle, proxy_url="http://127.0.0.1:9")
    assert (
        result.error == "target not allowed: internal.test resolves to 10.1.2.3, a private address"
    )
    assert connects == []


class TunnelProxy:
    """A proxy on loopback that records what it was asked for and connects there itself, as a
    real one does (resolving a name with the system's resolver, which knows no `.test` name):
    `CONNECT host:port` tunnels, `POST http://host:port/path` is forwarded."""

    def __init__(self) -> None:
        self.server = RawServer(self._handle)
        self.port = self.server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.asked: list[str] = []
        self.heads: list[bytes] = []  # what it was sent before the tunnel or the forwarded body

    def _handle(self, client: socket.socket) -> None:
        head = read_request(client)
        if b"\r\n\r\n" not in head:
            return
        method, target, rest = head.split(b" ", 2)
        if method == b"CONNECT":
            where, first = target.decode(), b""
        else:  # forwarding: the absolute URL names where to go
            where = urlsplit(target.decode()).netloc
            path = urlsplit(target.decode())
            origin = (path.path or "/") + (f"?{path.query}" if path.query else "")
            first = b" ".join([method, origin.encode(), rest])
        self.asked.append(where)
        self.heads.append(head)
        host, _, port = where.rpartition(":")
        try:
            up = socket.create_connection((host.strip("[]"), int(port)), timeout=2)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with up:
            if first:
                up.sendall(first)
            else:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(client, up)

    @staticmethod
    def _pipe(client: socket.socket, up: socket.socket) -> None:
        pair = {client: up, up: client}
        while True:
            ready, _, _ = select.select(list(pair), [], [], 5)
            if not ready:
                return
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                pair[sock].sendall(data)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def proxy() -> Iterator[TunnelProxy]:
    server = TunnelProxy()
    yield server
    server.close()


def test_through_a_proxy_the_checked_address_is_tunnelled_to_and_tls_checks_the_name(
    dns, named_receiver, ca_bundle, connects, proxy
):
    dns["hooks.test"] = "127.0.0.1"  # only the egress guard knows hooks.test

    first = send(named_receiver.url(host="hooks.test"), ca_bundle, proxy_url=proxy.url)
    second = send(named_receiver.url(host="hooks.test"), ca_bundle, proxy_url=proxy.url)

    # The proxy was asked for the address, not the name: it could not resolve it again. The
    # certificate (for hooks.test alone) was still checked against the name, through SNI.
    assert first.ok and second.ok, (first.error, second.error)
    assert proxy.asked == [f"127.0.0.1:{named_receiver.port}"]  # the tunnel was kept alive
    assert connects == [("127.0.0.1", proxy.port)]  # we connected to the proxy alone
    assert [r.headers["Host"] for r in named_receiver.requests] == [
        f"hooks.test:{named_receiver.port}"
    ] * 2


def test_through_a_proxy_a_tunnel_to_an_old_address_is_not_reused(
    dns, named_receiver, ca_bundle, proxy
):
    url = named_receiver.url(host="hooks.test")
    dns["hooks.test"] = "127.0.0.1"
    assert send(url, ca_bundle, proxy_url=proxy.url).ok

    dns["hooks.test"] = "127.0.0.2"  # the name moved (allowed, but nothing listens there)
    moved = send(url, ca_bundle, proxy_url=proxy.url)
    dns["hooks.test"] = ["127.0.0.3", "127.0.0.1"]  # the first refuses, the next one answers
    again = send(url, ca_bundle, proxy_url=proxy.url)

    assert moved.error == "the proxy could not connect: 502 Bad Gateway"
    assert again.ok, again.error
    port = named_receiver.port
    assert proxy.asked == [f"127.0.0.{n}:{port}" for n in (1, 2, 3, 1)]
    assert len(named_receiver.requests) == 2


def test_through_a_forwarding_proxy_http_goes_to_the_checked_address(dns, ca_bundle, proxy):
    plain = Receiver()
    try:
        dns["hooks.test"] = "127.0.0.1"
        result = send(plain.url(host="hooks.test"), ca_bundle, proxy_url=proxy.url, allow_http=True)
    finally:
        plain.close()

    assert result.ok, result.error
    assert proxy.asked == [f"127.0.0.1:{plain.port}"]
    assert plain.requests[0].headers["Host"] == f"hooks.test:{plain.port}"
    assert plain.requests[0].path == "/hook"


def test_the_proxy_urls_credentials_go_to_the_proxy(dns, named_receiver, ca_bundle, proxy):
    dns["hooks.test"] = "127.0.0.1"
    with_credentials = proxy.url.replace("http://", "http://ops:s%40fe@")
    plain = Receiver()
    try:
        tunnelled = send(
            named_receiver.url(host="hooks.test"), ca_bundle, proxy_url=with_credentials
        )
        forwarded = send(
            plain.url(host="hooks.test"), ca_bundle, proxy_url=with_credentials, allow_http=True
        )
    finally:
        plain.close()

    assert tunnelled.ok and forwarded.ok, (tunnelled.error, forwarded.error)
    expected = b"Proxy-Authorization: Basic " + base64.b64encode(b"ops:s@fe")
    assert len(proxy.heads) == 2 and all(expected in head for head in proxy.heads)


@pytest.mark.parametrize("proxy_url", ["socks5://127.0.0.1:1080", "socks5h://u:pw@proxy:1080"])
def test_a_socks_proxy_is_refused_at_start_up_naming_the_variable(proxy_url, capsys, tmp_path):
    from app import create_app

    with pytest.raises(SystemExit):
        create_app({"WEBHOOK_PROXY_URL": proxy_url, "SECRET_KEY": "x", "TESTING": True})

    line = capsys.readouterr().err.strip()
    assert line.startswith("configuration error: WEBHOOK_PROXY_URL must be an http:// or https")
    assert "SOCKS" in line and "pw" not in line


# -- through the API and the worker -----------------------------------------------------------


@pytest.fixture
def networks() -> str:
    """WEBHOOK_ALLOWED_PRIVATE_NETWORKS for this module's apps; a test parametrizes it."""
    return "127.0.0.0/8"


@pytest.fixture
def config(config, networks):  # type: ignore[no-untyped-def]
    config["WEBHOOK_ALLOWED_PRIVATE_NETWORKS"] = networks
    return config


@pytest.mark.parametrize("networks", [""])
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://10.0.0.1/x", "10.0.0.1 is a private address"),
        ("https://169.254.169.254/", "169.254.169.254 is a link-local address (cloud metadata)"),
        (
            "https://[::ffff:10.0.0.1]/",
            "::ffff:10.0.0.1 is a private address (IPv4-mapped 10.0.0.1)",
        ),
        ("https://2130706433/", "2130706433 is 127.0.0.1, a loopback address"),
        ("https://0x7f.1:8443/", "0x7f.1 is 127.0.0.1, a loopback address"),
        ("https://[::1]/", "::1 is a loopback address"),
        ("https://0.0.0.0/", "0.0.0.0 is an unspecified address"),
        ("https://100.64.0.1/", "100.64.0.1 is a shared address (carrier-grade NAT)"),
        ("https://[fe80::1%25eth0]/", "fe80::1%25eth0 carries a zone id"),
        ("https://internal.test/", "internal.test resolves to 10.1.2.3, a private address"),
    ],
)
def test_api_refuses_targets_naming_the_address(dns, api, url, message):  # type: ignore[no-untyped-def]
    dns["internal.test"] = "10.1.2.3"

    response = api.post("/webhooks", {"name": "Ops", "url": url, "events": ["*"]})

    assert response.status_code == 400, response.json
    error = response.json["error"]
    assert error["code"] == "target_not_allowed"
    assert error["message"].startswith(message)
    assert error["fields"] == {"url": error["message"]}
    # The setting that would allow it is named, where one can (a zone id: none).
    names_setting = "WEBHOOK_ALLOWED_PRIVATE_NETWORKS can allow it" in error["message"]
    assert names_setting == ("zone id" not in message)


@pytest.mark.parametrize("networks", [""])
def test_api_checks_the_url_on_change_too(dns, api):  # type: ignore[no-untyped-def]
    dns["hooks.test"] = "93.184.216.34"
    created = api.create_webhook("https://hooks.test/")

    response = api.patch(f"/webhooks/{created['id']}", {"url": "https://192.168.0.10/"})

    assert response.status_code == 400
    assert response.json["error"]["code"] == "target_not_allowed"
    assert response.json["error"]["message"] == (
        "192.168.0.10 is a private address"
        " (WEBHOOK_ALLOWED_PRIVATE_NETWORKS can allow it, for local testing)"
    )


@pytest.mark.parametrize("networks", ["10.0.0.0/8"])
def test_an_allowed_network_makes_a_private_address_acceptable(dns, api):  # type: ignore[no-untyped-def]
    body = {"name": "Ops", "url": "https://10.0.0.1/x", "events": ["*"]}
    assert api.post("/webhooks", body).status_code == 201
    body["url"] = "https://later.test/x"  # does not resolve yet: accepted, checked when sent
    assert api.post("/webhooks", body).status_code == 201
    body["url"] = "https://172.16.0.1/x"
    assert api.post("/webhooks", body).json["error"]["code"] == "target_not_allowed"


def first_attempt(api, event_id):  # type: ignore[no-untyped-def]
    """A condition: the event's delivery has made its first attempt, which is its value."""

    def check():  # type: ignore[no-untyped-def]
        attempts = api.delivery_of(event_id)["attempts"]
        return attempts[0] if attempts else None

    return check


def test_a_redirect_to_an_internal_address_is_not_followed(
    api, webhook, receiver, service, connects
):
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    receiver.answer(Reply(status=302, headers={"Location": metadata}))
    event = api.publish()

    attempt = service.run_until(first_attempt(api, event["id"]))

    assert attempt["response"]["status_code"] == 302
    assert attempt["error"] == f"HTTP 302: redirect to {metadata} not followed"
    assert [r.path for r in receiver.requests] == ["/hook"]
    assert {address for address, _ in connects} == {"127.0.0.1"}


@pytest.mark.parametrize("networks", ["127.0.0.1/32"])
def test_dns_rebinding_after_save_is_caught_at_send_time(api, service, dns, receiver, connects):
    dns["localhost"] = "127.0.0.1"  # at save time: an allowed address (the receiver's)
    api.create_webhook(receiver.url(host="localhost"))

    dns["localhost"] = "127.0.0.2"  # then the name moves to an address that is not allowed
    trap = socket.create_server(("127.0.0.2", receiver.port))
    try:
        event = api.publish()
        attempt = service.run_until(first_attempt(api, event["id"]))
        pending, _, _ = select.select([trap], [], [], 0.2)
    finally:
        trap.close()

    assert attempt["error"] == (
        "target not allowed: localhost resolves to 127.0.0.2, a loopback address"
    )
    assert attempt["response"] is None or attempt["response"]["status_code"] is None
    assert receiver.requests == [] and connects == [] and pending == []


def test_a_name_that_does_not_resolve_yet_is_saved_with_a_warning(api, dns):
    answer = api.post(
        "/webhooks", {"name": "Later", "url": "https://not-yet.invalid/hook", "events": ["*"]}
    )
    assert answer.status_code == 201
    assert any("not-yet.invalid" in w for w in answer.json["warnings"])
    again = api.patch(f"/webhooks/{answer.json['id']}", {"url": "https://still-not.invalid/x"})
    assert again.status_code == 200 and again.json["warnings"]


# -- ports ----------------------------------------------------------------------------------------


def test_ports_outside_the_allowed_ones_are_refused_naming_the_setting(connects):
    with pytest.raises(egress.TargetNotAllowed) as caught:
        egress.check_target("https://93.184.216.34:25/", ())
    assert caught.value.message == (
        "port 25 is not allowed (WEBHOOK_ALLOWED_PORTS allows 443,1024-65535)"
    )
    assert egress.check_target("https://93.184.216.34/", ()).port == 443
    assert egress.check_target("https://93.184.216.34:8443/", ()).port == 8443
    # 80 only for http://, and only where http:// is allowed at all.
    with pytest.raises(egress.TargetNotAllowed, match="port 80 is not allowed"):
        egress.check_target("https://93.184.216.34:80/", ())
    assert egress.check_target("http://93.184.216.34/", (), allow_http=True).port == 80
    with pytest.raises(egress.TargetNotAllowed, match=r"port 22 is not allowed .*allows 8443\)"):
        egress.check_target("https://93.184.216.34:22/", (), allowed_ports=((8443, 8443),))


def test_a_port_that_is_not_allowed_makes_no_connection(receiver, ca_bundle, connects):
    result = send(receiver.url(), ca_bundle, allowed_ports=((443, 443),))

    assert result.error == (
        f"target not allowed: port {receiver.port} is not allowed "
        "(WEBHOOK_ALLOWED_PORTS allows 443)"
    )
    assert result.status_code is None and connects == [] and receiver.requests == []


@pytest.mark.parametrize("networks", [""])
def test_api_refuses_a_port_that_is_not_allowed(api):  # type: ignore[no-untyped-def]
    body = {"name": "Mail", "url": "https://93.184.216.34:25/", "events": ["*"]}

    response = api.post("/webhooks", body)

    assert response.status_code == 400
    error = response.json["error"]
    message = "port 25 is not allowed (WEBHOOK_ALLOWED_PORTS allows 443,1024-65535)"
    assert (error["code"], error["message"], error["fields"]) == (
        "target_not_allowed",
        message,
        {"url": message},
    )
    assert api.get("/webhooks").json["data"] == []


@pytest.mark.parametrize("networks", [""])
def test_the_alert_url_follows_the_port_rule_too(api):  # type: ignore[no-untyped-def]
    body = {"emails": [], "alert_url": "https://93.184.216.34:22/"}
    response = api.put("/notifications", body)

    assert response.status_code == 400
    error = response.json["error"]
    assert error["code"] == "target_not_allowed"
    assert error["fields"] == {
        "alert_url": "port 22 is not allowed (WEBHOOK_ALLOWED_PORTS allows 443,1024-65535)"
    }


def test_a_port_no_longer_allowed_fails_the_attempt_at_send_time(
    app, api, webhook, receiver, connects
):  # type: ignore[no-untyped-def]
    from tests.conftest import Service

    services.reconfigure(app, WEBHOOK_ALLOWED_PORTS=((443, 443),))  # narrowed after saving
    event = api.publish()

    attempt = Service(app).run_until(first_attempt(api, event["id"]))

    assert attempt["error"] == (
        f"target not allowed: port {receiver.port} is not allowed "
        "(WEBHOOK_ALLOWED_PORTS allows 443)"
    )
    assert receiver.requests == [] and connects == []


@pytest.mark.parametrize("value", ["25-22", "0", "http", "443,65536", ""])
def test_a_bad_port_list_names_the_variable(value):
    from webhooks.config import ConfigError, load

    with pytest.raises(ConfigError, match=r"^WEBHOOK_ALLOWED_PORTS must list"):
        load({"WEBHOOK_ALLOWED_PORTS": value})
    assert load({"WEBHOOK_ALLOWED_PORTS": "443, 8000-8999"})["WEBHOOK_ALLOWED_PORTS"] == (
        (443, 443),
        (8000, 8999),
    )


# -- DNS lookups bounded in time ----------------------------------------------------------------


class HangingAnswer:
    """A DNS answer that does not come: the lookup hangs until released (or 10 s, then the
    name does not resolve), like a resolver whose server never answers."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.asked = 0

    def __iter__(self) -> Iterator[str]:
        self.asked += 1
        if not self.released.wait(10):
            raise socket.gaierror(socket.EAI_AGAIN, "the test's resolver gave up")
        return iter(["127.0.0.1"])


@pytest.fixture
def hanging() -> Iterator[HangingAnswer]:
    answer = HangingAnswer()
    yield answer
    answer.released.set()


def test_a_hanging_lookup_ends_the_attempt_at_its_deadline(
    dns, named_receiver, ca_bundle, connects, hanging
):
    import time

    dns["hooks.test"] = hanging
    started = time.monotonic()
    result = transport.post(
        named_receiver.url(host="hooks.test"),
        b"{}",
        {},
        timeout=0.5,
        ca_bundle=ca_bundle,
        allowed_networks=LOOPBACK,
    )
    took = time.monotonic() - started

    assert result.error == "timed out after 0.5 s (hooks.test did not resolve)"
    assert 0.5 <= took < 1.0 and result.duration_ms < 1000
    assert connects == [] and named_receiver.requests == []


def test_one_hanging_name_does_not_hold_up_other_lookups(dns, named_receiver, ca_bundle, hanging):
    import time

    dns["slow.test"] = hanging
    dns["hooks.test"] = "127.0.0.1"
    for _ in range(40):  # more than the lookup threads: they wait for the one lookup running
        assert send("https://slow.test/", ca_bundle, timeout=0.05).error.startswith("timed out")

    started = time.monotonic()
    result = send(named_receiver.url(host="hooks.test"), ca_bundle)

    assert result.ok, result.error
    assert time.monotonic() - started < 1.0
    assert hanging.asked == 1  # one lookup of slow.test ran; the other 39 waited for it


def test_a_hanging_lookup_at_save_time_answers_within_seconds(dns, api, hanging):  # type: ignore[no-untyped-def]
    import time

    dns["slow.test"] = hanging
    started = time.monotonic()
    answer = api.post("/webhooks", {"name": "Slow", "url": "https://slow.test/h", "events": ["*"]})
    took = time.monotonic() - started

    assert answer.status_code == 201, answer.json
    assert answer.json["warnings"] == [
        "slow.test did not resolve within 3 s; it is saved, and its addresses will be checked "
        "when a delivery is sent"
    ]
    assert took < egress.SAVE_LOOKUP_SECONDS + 1.5


# -- the URL as it is sent ---------------------------------------------------------------------

_URL_PIECES = st.sampled_from(
    ["", "/", "%", "%2", "%41", "%7e", "%zz", "%2F", " ", "é", "ü", "a b", "?", "#", "@", ":",
     "[", "]", "*", ".", "~", "\t", "%25", "+", "xn--", "日本", "\u200b", "%E2%82%AC", "/a/../b"]
)  # fmt: skip


@examples(max_examples=400, deadline=None)
@given(
    scheme=st.sampled_from(["https://", "http://", "HTTPS://", "Http://", "ftp://", "", "//"]),
    auth=st.sampled_from(["", "user@", "u:p@", "ü:%40@"]),
    host=st.lists(st.sampled_from(["example", "com", "bücher", "*", "", "日本", "xn--nxasmq6b",
                                   "1", "127.0.0.1", "[::1]", "EXAMPLE", "a-b"]),
                  min_size=0, max_size=3).map(".".join),
    port=st.sampled_from(["", ":443", ":8443", ":", ":99999", ":x"]),
    rest=st.lists(_URL_PIECES, max_size=6).map("".join),
)  # fmt: skip
def test_a_url_is_made_canonical_exactly_as_requests_makes_it(scheme, auth, host, port, rest):
    """The guard checks the URL the client will send; requests' own preparation is the
    reference (the service no longer loads requests to send)."""
    import requests

    url = f"{scheme}{auth}{host}{port}{rest}"
    prepared = requests.models.PreparedRequest()
    try:
        prepared.prepare_url(url, None)
        expected: tuple[str, str | None] = ("ok", prepared.url)
    except ValueError as exc:
        expected = ("refused", str(exc))
    try:
        got: tuple[str, str | None] = ("ok", egress.canonical_url(url))
    except ValueError as exc:
        got = ("refused", str(exc))

    assert got == expected, url
