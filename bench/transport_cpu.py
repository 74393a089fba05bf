"""CPU per HTTPS POST: `transport.post` beside a bare requests Session and a bare urllib3 pool,
and the worker's event loop (`aiotransport`) with as many POSTs in flight as there are threads.

    .venv/bin/python bench/transport_cpu.py [--n 3000] [--threads 8] [--rounds 3]

A local HTTPS receiver (http.server, threaded, HTTP/1.1 keep-alive, answering 204, with a
certificate from a throwaway trustme CA) runs in a child process, so that the CPU counted here
(time.process_time of this process) is the sender's alone. Each client posts N times from
`--threads` threads after a warm-up that opens its kept-alive connections; the clients take
turns round by round, and each one's best round is shown, as ms of CPU per POST. One line
is the egress guard's check alone (URL parsing and the address check, no network), which
transport.post does before every POST. The delivery worker now posts on one event loop: the
last line is what each attempt adds to a worker's CPU.
"""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BODY = b'{"type":"incident.created","data":{"id":"inc_1"}}'
HEADERS = {"Content-Type": "application/json", "User-Agent": "bench"}
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def serve(cert: str, key: str) -> None:
    """The receiver (child process): print the port, then answer every POST with 204."""
    import ssl
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def start_receiver(workdir: Path) -> tuple[subprocess.Popen[str], str, str]:
    """A child process serving HTTPS on loopback; its URL and the CA bundle that trusts it."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_path, cert_path, key_path = (workdir / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(cert_path), str(key_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    port = int(child.stdout.readline())
    return child, f"https://127.0.0.1:{port}/hook", str(ca_path)


def via_transport(url: str, ca_bundle: str) -> Callable[[], int | None]:
    from webhooks import transport

    def post() -> int | None:
        result = transport.post(
            url, BODY, HEADERS, timeout=30, ca_bundle=ca_bundle, allowed_networks=LOOPBACK
        )
        assert result.ok, result.error
        return result.status_code

    return post


def via_requests(url: str, ca_bundle: str) -> Callable[[], int | None]:
    import requests

    local = threading.local()  # a Session is not meant to be shared by threads

    def post() -> int | None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        answer = session.post(url, data=BODY, headers=HEADERS, timeout=30, verify=ca_bundle)
        return answer.status_code

    return post


def via_urllib3(url: str, ca_bundle: str) -> Callable[[], int | None]:
    import urllib3

    pool = urllib3.PoolManager(maxsize=16, ca_certs=ca_bundle, retries=False)

    def post() -> int | None:
        return pool.request("POST", url, body=BODY, headers=HEADERS, timeout=30).status

    return post


def via_egress_check(url: str, ca_bundle: str) -> Callable[[], int | None]:
    """The egress guard's send-time check alone: part of transport.post's cost."""
    from webhooks import egress

    def post() -> int | None:
        egress.check_target(url, LOOPBACK, deadline=time.monotonic() + 30)
        return 204

    return post


def cpu_per_post(post: Callable[[], int | None], n: int, threads: int) -> tuple[float, float]:
    """(ms of CPU, ms of wall time) per POST, for n POSTs from `threads` threads."""
    with ThreadPoolExecutor(threads) as pool:
        assert all(s == 204 for s in pool.map(lambda _: post(), range(threads * 4)))  # warm up
        cpu, wall = time.process_time(), time.perf_counter()
        statuses = list(pool.map(lambda _: post(), range(n)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert statuses.count(204) == n, statuses[:5]
    return cpu * 1000 / n, wall * 1000 / n


def aio_cpu_per_post(url: str, ca_bundle: str, n: int, in_flight: int) -> tuple[float, float]:
    """The worker's own way: `aiotransport.Client.post` on one event loop, `in_flight` POSTs
    at a time; (ms of CPU, ms of wall time) per POST."""
    import asyncio

    from webhooks import aiotransport

    async def run() -> tuple[float, float]:
        client = aiotransport.Client()
        slots = asyncio.Semaphore(in_flight)

        async def post() -> int | None:
            async with slots:
                result = await client.post(
                    url, BODY, HEADERS, timeout=30, ca_bundle=ca_bundle, allowed_networks=LOOPBACK
                )
            assert result.ok, result.error
            return result.status_code

        await asyncio.gather(*(post() for _ in range(in_flight * 4)))  # warm up
        cpu, wall = time.process_time(), time.perf_counter()
        statuses = await asyncio.gather(*(post() for _ in range(n)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await client.close()
        assert statuses.count(204) == n, statuses[:5]
        return cpu * 1000 / n, wall * 1000 / n

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="POSTs per round and client")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="the best round is shown")
    parser.add_argument("--serve", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    clients = {"requests.Session": via_requests, "urllib3 PoolManager": via_urllib3}
    clients["transport.post"] = via_transport
    clients["(its egress check)"] = via_egress_check
    with tempfile.TemporaryDirectory() as workdir:
        child, url, ca_bundle = start_receiver(Path(workdir))
        try:
            print(f"{args.n} POSTs on {args.threads} threads, best of {args.rounds} rounds")
            print(f"{'client':<22} {'CPU ms/POST':>12} {'wall ms/POST':>13}")
            posts = {name: make(url, ca_bundle) for name, make in clients.items()}
            rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in posts}
            loop_name = "aiotransport (a loop)"
            rounds[loop_name] = []
            for _ in range(args.rounds):  # in turn, so that a slow spell of the machine is shared
                for name, post in posts.items():
                    rounds[name].append(cpu_per_post(post, args.n, args.threads))
                rounds[loop_name].append(aio_cpu_per_post(url, ca_bundle, args.n, args.threads))
            for name, measured in rounds.items():
                cpu, wall = min(measured)
                print(f"{name:<22} {cpu:>12.3f} {wall:>13.3f}")
        finally:
            child.terminate()
            child.wait()


if __name__ == "__main__":
    main()
