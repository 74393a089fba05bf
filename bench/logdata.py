"""Bulk-load a delivery log for the "logs at scale" benchmark, in SQL, straight into the tables.

`rows` deliveries with one attempt each, ten deliveries per event, spread over the last seven
days (newest first every 0.6 s), over the given webhooks and event types; 90 % succeeded, 7 %
failed and 3 % pending, independently of the webhook; pending ones are due a day later (so the
scheduler leaves them alone). Attempt bodies are short (about 200 bytes): the lists never read
them.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

FAN = 10  # deliveries per event
STEP_MS = 600  # between consecutive deliveries, newest first
ATTEMPT_BODY = json.dumps({"id": "evt_bench", "type": "incident.created", "data": {"x": "y" * 120}})
# Event titles for the search: five common phrases over a thousand hosts, and a rare word
# ("zebra") in one event of RARE_EVERY, so a search can match a fifth of the log or almost none.
TITLES = ("Disk almost full on", "CPU above 95 % on", "Public bucket found in",
          "Certificate expires soon for", "Memory pressure on")  # fmt: skip
RARE_EVERY = 9973
ATTEMPT_HEADERS = json.dumps(
    {"Content-Type": "application/json", "User-Agent": "CloudThinker-Webhooks/1.0"}
)


def load_postgres(conn, workspace_id: str, webhook_ids: list[str], types: list[str], rows: int):
    """`conn`: a psycopg connection (autocommit off)."""
    events = (rows + FAN - 1) // FAN
    params = {
        "ws": workspace_id,
        "hooks": webhook_ids,
        "types": types,
        "nh": len(webhook_ids),
        "nt": len(types),
        "rows": rows,
        "events": events,
        "fan": FAN,
        "step": f"{STEP_MS} milliseconds",
        "body": ATTEMPT_BODY,
        "headers": ATTEMPT_HEADERS,
        "titles": list(TITLES),
        "rare": RARE_EVERY,
    }
    with conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute(
            """
            INSERT INTO events (id, workspace_id, type, data, occurred_at, created_at, is_test)
            SELECT 'evt_bench' || lpad(e::text, 12, '0'), %(ws)s,
                   (%(types)s::text[])[1 + e %% %(nt)s],
                   jsonb_build_object('bench', true, 'title',
                       (%(titles)s::text[])[1 + e %% 5] || ' host-' || (e %% 997)
                       || CASE WHEN e %% %(rare)s = 0 THEN ' zebra' ELSE '' END),
                   ts, ts, false
            FROM (SELECT e, (now() AT TIME ZONE 'utc') - (e * %(fan)s) * %(step)s::interval AS ts
                  FROM generate_series(1, %(events)s) e) s
            """,
            params,
        )
        cur.execute(
            """
            INSERT INTO deliveries (id, workspace_id, event_id, webhook_id, event_type, kind,
                status, attempt_count, lost_count, max_attempts, ignores_pause, next_attempt_at,
                last_status_code, last_error, created_at, updated_at)
            SELECT 'dlv_bench' || lpad(g::text, 12, '0'), %(ws)s,
                   'evt_bench' || lpad(e::text, 12, '0'),
                   (%(hooks)s::text[])[1 + g %% %(nh)s], (%(types)s::text[])[1 + e %% %(nt)s],
                   'event', st, 1, 0, 6, false,
                   CASE WHEN st = 'pending' THEN (now() AT TIME ZONE 'utc') + interval '1 day' END,
                   CASE WHEN st = 'succeeded' THEN 204 ELSE 500 END,
                   CASE WHEN st = 'succeeded' THEN NULL ELSE 'HTTP 500' END, ts, ts
            FROM (SELECT g, e, (now() AT TIME ZONE 'utc') - g * %(step)s::interval AS ts,
                         CASE WHEN (g / %(nh)s) %% 100 < 90 THEN 'succeeded'
                              WHEN (g / %(nh)s) %% 100 < 97 THEN 'failed'
                              ELSE 'pending' END AS st
                  FROM (SELECT g, 1 + (g - 1) / %(fan)s AS e
                        FROM generate_series(1, %(rows)s) g) q) s
            """,
            params,
        )
        cur.execute(
            """
            INSERT INTO attempts (delivery_id, number, outcome, started_at, duration_ms,
                request_url, request_headers, request_body, response_status, response_headers,
                response_body, error)
            SELECT id, 1, CASE WHEN status = 'succeeded' THEN 'success' ELSE 'failure' END,
                   created_at, 12, 'http://127.0.0.1/hook', %(headers)s::jsonb, %(body)s,
                   last_status_code, '{}'::jsonb, '', last_error
            FROM deliveries WHERE workspace_id = %(ws)s
            """,
            params,
        )
    conn.commit()
    # What autovacuum would do over the days such a log takes to grow, done now: left to it,
    # a million rows inserted at once set it vacuuming the three tables during the phases that
    # follow (it is triggered by inserts too), and their rates measured its work.
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE events")
        cur.execute("VACUUM ANALYZE deliveries")
        cur.execute("VACUUM ANALYZE attempts")
    conn.autocommit = False


def _sqlite_time(seconds_ago_expr: str, base: float) -> str:
    """SQL for the storage format SQLAlchemy uses on SQLite: 'YYYY-MM-DD HH:MM:SS.ffffff'."""
    whole_seconds_ago = f"(({seconds_ago_expr}) + 999) / 1000"
    return (
        f"strftime('%Y-%m-%d %H:%M:%S', {base:.0f} - {whole_seconds_ago}, 'unixepoch')"
        f" || printf('.%06d', (1000000 - (({seconds_ago_expr}) % 1000) * 1000) % 1000000)"
    )


def load_sqlite(
    conn, workspace_id: str, webhook_ids: list[str], types: list[str], rows: int, batch=200_000
):
    """`conn`: a sqlite3 connection in autocommit (isolation_level=None). Batches of `batch`
    rows, each its own transaction, so the service's processes are not locked out for long."""
    base = time.time()
    conn.execute("CREATE TEMP TABLE bench_hooks (i INTEGER PRIMARY KEY, id TEXT)")
    conn.execute("CREATE TEMP TABLE bench_types (i INTEGER PRIMARY KEY, t TEXT)")
    conn.executemany("INSERT INTO bench_hooks VALUES (?, ?)", list(enumerate(webhook_ids)))
    conn.executemany("INSERT INTO bench_types VALUES (?, ?)", list(enumerate(types)))
    conn.execute("CREATE TEMP TABLE bench_titles (i INTEGER PRIMARY KEY, t TEXT)")
    conn.executemany("INSERT INTO bench_titles VALUES (?, ?)", list(enumerate(TITLES)))
    nh, nt = len(webhook_ids), len(types)
    ev_time = _sqlite_time(f"e * {FAN * STEP_MS}", base)
    dl_time = _sqlite_time(f"g * {STEP_MS}", base)
    future = datetime.fromtimestamp(base + 86400, UTC).strftime("%Y-%m-%d %H:%M:%S.000000")
    events = (rows + FAN - 1) // FAN
    for lo in range(1, events + 1, batch // FAN):
        hi = min(events, lo + batch // FAN - 1)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            f"""
            WITH RECURSIVE n(e) AS (SELECT {lo} UNION ALL SELECT e + 1 FROM n WHERE e < {hi})
            INSERT INTO events (id, workspace_id, type, data, occurred_at, created_at, is_test)
            SELECT 'evt_bench' || printf('%012d', e), ?,
                   (SELECT t FROM bench_types WHERE i = e % {nt}),
                   json_object('bench', json('true'), 'title',
                       (SELECT t FROM bench_titles WHERE i = e % 5) || ' host-' || (e % 997)
                       || CASE WHEN e % {RARE_EVERY} = 0 THEN ' zebra' ELSE '' END),
                   {ev_time}, {ev_time}, 0
            FROM n
            """,
            (workspace_id,),
        )
        conn.execute("COMMIT")
    for lo in range(1, rows + 1, batch):
        hi = min(rows, lo + batch - 1)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            f"""
            WITH RECURSIVE n(g) AS (SELECT {lo} UNION ALL SELECT g + 1 FROM n WHERE g < {hi}),
            q AS (SELECT g, 1 + (g - 1) / {FAN} AS e,
                         CASE WHEN (g / {nh}) % 100 < 90 THEN 'succeeded'
                              WHEN (g / {nh}) % 100 < 97 THEN 'failed'
                              ELSE 'pending' END AS st FROM n)
            INSERT INTO deliveries (id, workspace_id, event_id, webhook_id, event_type, kind,
                status, attempt_count, lost_count, max_attempts, ignores_pause, next_attempt_at,
                last_status_code, last_error, created_at, updated_at)
            SELECT 'dlv_bench' || printf('%012d', g), ?, 'evt_bench' || printf('%012d', e),
                   (SELECT id FROM bench_hooks WHERE i = g % {nh}),
                   (SELECT t FROM bench_types WHERE i = e % {nt}),
                   'event', st, 1, 0, 6, 0,
                   CASE WHEN st = 'pending' THEN '{future}' END,
                   CASE WHEN st = 'succeeded' THEN 204 ELSE 500 END,
                   CASE WHEN st = 'succeeded' THEN NULL ELSE 'HTTP 500' END,
                   {dl_time}, {dl_time}
            FROM q
            """,
            (workspace_id,),
        )
        conn.execute(
            f"""
            INSERT INTO attempts (delivery_id, number, outcome, started_at, duration_ms,
                request_url, request_headers, request_body, response_status, response_headers,
                response_body, error)
            SELECT id, 1, CASE WHEN status = 'succeeded' THEN 'success' ELSE 'failure' END,
                   created_at, 12, 'http://127.0.0.1/hook', ?, ?, last_status_code, '{{}}', '',
                   last_error
            FROM deliveries
            WHERE id BETWEEN 'dlv_bench' || printf('%012d', {lo})
                         AND 'dlv_bench' || printf('%012d', {hi})
            """,
            (ATTEMPT_HEADERS, ATTEMPT_BODY),
        )
        conn.execute("COMMIT")
    conn.execute("DROP TABLE bench_hooks")
    conn.execute("DROP TABLE bench_types")
    conn.execute("DROP TABLE bench_titles")
