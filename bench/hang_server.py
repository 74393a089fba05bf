"""A target that accepts connections, reads what is sent, and never answers.

Used by the isolation benchmark: a webhook pointing here holds its delivery until the
service's own timeout cuts it. It idles in an asyncio loop, so it costs no CPU while waiting.

    python bench/hang_server.py HANG_PORT STATS_PORT [CERT KEY]

With CERT and KEY, HANG_PORT speaks HTTPS: the handshake completes and the request is read,
as from a receiver that hangs inside its handler (the stats port stays plain HTTP).

`GET /` on STATS_PORT answers {"open": …, "max_open": …, "total": …} and resets `max_open`
to the current number of open connections.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys

state = {"open": 0, "max_open": 0, "total": 0}


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    state["open"] += 1
    state["total"] += 1
    state["max_open"] = max(state["max_open"], state["open"])
    try:
        while await reader.read(65536):  # discard the request; never answer
            pass
    except (ConnectionError, OSError):
        pass
    finally:
        state["open"] -= 1
        writer.close()


async def stats(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    body = json.dumps(state).encode()
    state["max_open"] = state["open"]
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    writer.close()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def main(hang_port: int, stats_port: int, tls: ssl.SSLContext | None) -> None:
    s1 = await asyncio.start_server(hang, "127.0.0.1", hang_port, backlog=4096, ssl=tls)
    s2 = await asyncio.start_server(stats, "127.0.0.1", stats_port)
    print("ready", flush=True)
    async with s1, s2:
        await asyncio.gather(s1.serve_forever(), s2.serve_forever())


if __name__ == "__main__":
    tls = tls_context(sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else None
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), tls))
