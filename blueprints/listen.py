"""The `listen` command's client: open a listener, read its stream, forward or print each
attempt, report each outcome, and close the listener on Ctrl-C."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click
import requests

from webhooks import verification
from webhooks.models import utcnow

RECONNECT_SECONDS = 1.0
# The stream sends a comment at least every 15 s; this long without a byte means the server
# is gone.
READ_TIMEOUT = 45.0


class ListenerGone(Exception):
    """The server no longer knows the listener (closed from elsewhere, or by itself)."""


@dataclass
class Listen:
    server: str
    api_key: str
    forward_to: str | None
    events: list[str]
    timeout: float

    def __post_init__(self) -> None:
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.api_key}"
        self.info: dict[str, Any] = {}

    def url(self, path: str) -> str:
        return self.server.rstrip("/") + path

    def open(self) -> dict[str, Any]:
        """Create the listener; its answer carries the secret, shown once."""
        try:
            answer = self.http.post(self.url("/api/v1/listeners"), json={"events": self.events})
        except requests.RequestException as exc:
            raise click.ClickException(f"cannot reach {self.server}: {exc}") from None
        if answer.status_code != 201:
            raise click.ClickException(
                f"{self.server} refused the listener: HTTP {answer.status_code} {answer.text[:300]}"
            )
        self.info = answer.json()
        return self.info

    def close(self) -> None:
        try:
            self.http.delete(self.url(f"/api/v1/listeners/{self.info['id']}"), timeout=10)
        except requests.RequestException as exc:
            click.echo(f"could not close the listener ({exc}); it closes by itself in 60 s")

    def run(self) -> None:
        """Read the stream forever, reconnecting when it drops."""
        while True:
            try:
                with self.http.get(
                    self.url(self.info["stream_url"]), stream=True, timeout=(5, READ_TIMEOUT)
                ) as stream:
                    if stream.status_code == 404:
                        raise ListenerGone()
                    if stream.status_code != 200:
                        click.echo(f"stream answered HTTP {stream.status_code}; retrying", err=True)
                    else:
                        for event, data in events(stream):
                            if event == "delivery":
                                self.handle(json.loads(data))
            except requests.RequestException as exc:
                click.echo(f"stream interrupted ({exc.__class__.__name__}); reconnecting", err=True)
            time.sleep(RECONNECT_SECONDS)

    def handle(self, attempt: dict[str, Any]) -> None:
        """Forward (or print) one attempt, report its outcome, print its line."""
        headers, body = attempt["headers"], attempt["body"].encode()
        started = time.monotonic()
        result = self.forward(headers, body) if self.forward_to else self.show(headers, body)
        result["duration_ms"] = int((time.monotonic() - started) * 1000)
        reported = self.http.post(
            self.url(f"/api/v1/listeners/{self.info['id']}/results"),
            json={"delivery_id": attempt["delivery_id"], "attempt": attempt["attempt"], **result},
            timeout=10,
        )
        outcome = result.get("error") or str(result.get("status_code"))
        late = "" if reported.status_code == 202 else " (too late: the attempt had timed out)"
        event_type = verification.header(headers, "X-CloudThinker-Event")
        event_id = verification.header(headers, "webhook-id")
        click.echo(
            f"{datetime.now():%Y-%m-%d %H:%M:%S} {event_type} {event_id} -> {outcome} "
            f"({result['duration_ms']} ms){late}"
        )

    def forward(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """POST the attempt to the local app exactly as a receiver gets it."""
        try:
            answer = requests.post(
                self.forward_to,  # type: ignore[arg-type]
                data=body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            return {"error": f"forwarding to {self.forward_to} failed: {exc}"}
        return {
            "status_code": answer.status_code,
            "headers": dict(answer.headers),
            "body": answer.text[:20_000],
        }

    def show(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """Print the attempt and check its signature with the listener's secret."""
        click.echo("".join(f"{k}: {v}\n" for k, v in headers.items()))
        click.echo(body.decode("utf-8", errors="replace"))
        report = verification.verify(
            body=body.decode("utf-8", errors="replace"),
            headers=headers,
            secrets=[verification.Secret(self.info["secret"])],
            sent=verification.Sent(body.decode("utf-8", errors="replace"), headers),
            delivery_known=True,
            now=utcnow(),
        )
        for check in report.checks:
            click.echo(f"  {check.header}: {'verified' if check.valid else check.reason}")
        return {"status_code": 200}


def events(response: requests.Response) -> Iterator[tuple[str, str]]:
    """(event, data) of each Server-Sent Event, as its bytes arrive."""
    buffer, event, data = b"", "message", list[str]()
    while True:
        chunk = response.raw.read1(65536)
        if not chunk:
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8").rstrip("\r")
            if not line:
                if data:
                    yield event, "\n".join(data)
                event, data = "message", []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
