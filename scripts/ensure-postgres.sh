#!/usr/bin/env bash
# Exit 0 when PostgreSQL answers at the URL given, starting a local cluster if one is installed.
set -uo pipefail
python=${1:-.venv/bin/python}
url=${2:-postgresql://postgres@127.0.0.1:5432/postgres}

ping() {
  "$python" - "$url" <<'PY' 2>/dev/null
import sys
import psycopg
from sqlalchemy.engine import make_url
u = make_url(sys.argv[1])
psycopg.connect(host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username, password=u.password,
                dbname=u.database or "postgres", connect_timeout=2).close()
PY
}

ping && exit 0
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  for version in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
  done
  for _ in $(seq 30); do ping && exit 0; sleep 0.2; done
fi
exit 1
