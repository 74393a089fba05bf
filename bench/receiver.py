"""The receivers: nginx answering 204 on loopback, and a target that never answers.

Both speak HTTPS, with a certificate from the bench's own CA (bench/tls.py), as real receivers
do; nginx also answers plain HTTP on a port of its own, for the raw ceiling over HTTP only.

nginx (one worker process) answers every `POST /hook/…` with 204 and writes one access-log
line per request: `$msec $http_webhook_id $http_x_cloudthinker_delivery $uri $status`.
That log is how arrivals are counted and timed ($msec: the time the request was handled, in
milliseconds). It is written unbuffered, so the bench can read it as it grows; its cost is
shown by measuring nginx's capacity with and without it (`/hook/` logs, `/nolog/` does not).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs
from bench.tls import Certificates

HERE = Path(__file__).resolve().parent

NGINX_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 8192; multi_accept on; }}
http {{
  access_log off;
  log_format arrivals '$msec $http_webhook_id $http_x_cloudthinker_delivery $uri $status';
  client_body_temp_path {dir}/tmp/body;
  proxy_temp_path {dir}/tmp/proxy;
  fastcgi_temp_path {dir}/tmp/fastcgi;
  uwsgi_temp_path {dir}/tmp/uwsgi;
  scgi_temp_path {dir}/tmp/scgi;
  client_body_buffer_size 256k;
  client_max_body_size 1m;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  ssl_certificate {cert};
  ssl_certificate_key {key};
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:bench:1m;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    listen 127.0.0.1:{tls_port} ssl backlog=4096;
    location /hook/ {{ access_log {dir}/arrivals.log arrivals; return 204; }}
    location /nolog/ {{ return 204; }}
    location = /status {{ stub_status; }}
  }}
}}
"""


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("nginx is not installed: run bench/ensure-tools.sh as root (apt-get)")


@dataclass
class Arrival:
    at: float  # seconds since the epoch (nginx $msec)
    event_id: str
    delivery_id: str
    uri: str


@dataclass
class ArrivalLog:
    """Reads the access log as it grows; keeps every arrival of the webhook service."""

    path: Path
    offset: int = 0
    rest: bytes = b""
    by_event: dict[str, list[Arrival]] = field(default_factory=dict)
    deliveries: set[str] = field(default_factory=set)
    count: int = 0
    duplicates: int = 0

    def poll(self) -> list[Arrival]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self.rest + chunk
        lines = data.split(b"\n")
        self.rest = lines.pop()
        new = []
        for line in lines:
            parts = line.decode(errors="replace").split(" ")
            if len(parts) < 5:
                continue
            self.count += 1
            if not parts[1].startswith("evt_"):
                continue  # not from the service (raw client, wrk)
            arrival = Arrival(float(parts[0]), parts[1], parts[2], parts[3])
            if arrival.delivery_id in self.deliveries:
                self.duplicates += 1
            self.deliveries.add(arrival.delivery_id)
            self.by_event.setdefault(arrival.event_id, []).append(arrival)
            new.append(arrival)
        return new


class Receiver:
    def __init__(self, workdir: Path, certs: Certificates) -> None:
        self.dir = workdir / "nginx"
        (self.dir / "tmp").mkdir(parents=True)
        self.certs = certs
        self.port = procs.free_port()  # plain HTTP: the third raw ceiling, and wrk
        self.tls_port = procs.free_port()
        self.hang_port = procs.free_port()
        self.stats_port = procs.free_port()
        self.nginx: subprocess.Popen | None = None
        self.hang: subprocess.Popen | None = None
        self.log = ArrivalLog(self.dir / "arrivals.log")

    def url(self, path: str) -> str:
        """Where the service's webhooks point: HTTPS, as in a deployment."""
        return f"https://127.0.0.1:{self.tls_port}/hook/{path}"

    def http_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{path}"

    def hang_url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.hang_port}/hang/{path}"

    def start(self) -> None:
        import os

        # As root nginx drops its workers to `nobody`, who must be able to use the temp dirs.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.dir / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                dir=self.dir,
                port=self.port,
                tls_port=self.tls_port,
                cert=self.certs.cert,
                key=self.certs.key,
                user=user,
            )
        )
        self.nginx = procs.start(
            [nginx_binary(), "-p", str(self.dir), "-c", str(conf), "-g", "daemon off;"],
            log=self.dir / "nginx.out",
        )
        self.hang = procs.start(
            [
                sys.executable,
                str(HERE / "hang_server.py"),
                str(self.hang_port),
                str(self.stats_port),
                str(self.certs.cert),
                str(self.certs.key),
            ],
            log=self.dir / "hang.out",
        )
        for port in (self.port, self.tls_port, self.hang_port, self.stats_port):
            if not procs.wait_port(port):
                raise SystemExit(f"receiver did not start on port {port}; see {self.dir}")

    def pids(self) -> list[int]:
        return procs.tree(self.nginx.pid) if self.nginx else []

    def hang_stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/", timeout=2) as r:
            return json.loads(r.read())

    def capacity(
        self, body: bytes, *, logged: bool, tls: bool, seconds: float, connections: int
    ) -> float:
        """Requests/s nginx answers with wrk (2 threads) posting `body`, kept-alive."""
        wrk = shutil.which("wrk")
        if wrk is None:
            return float("nan")
        script = self.dir / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body.decode())}\n"
        )
        path = "/hook/wrk" if logged else "/nolog/wrk"
        base = f"https://127.0.0.1:{self.tls_port}" if tls else f"http://127.0.0.1:{self.port}"
        out = subprocess.run(
            [
                wrk,
                "-t2",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "-s",
                str(script),
                base + path,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        found = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
        if not found:
            raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
        return float(found.group(1))

    def wait_quiet(self, seconds: float = 0.3) -> None:
        time.sleep(seconds)
        self.log.poll()
