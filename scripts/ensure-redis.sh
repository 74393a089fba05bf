#!/usr/bin/env bash
# Make sure a Redis answers at $REDIS_URL: start a local redis-server if none does,
# installing Debian's package first when it is missing and we are root.
set -euo pipefail
python=${1:-.venv/bin/python}
url=${REDIS_URL:-redis://127.0.0.1:6379/0}

ping() { "$python" -c 'import sys, redis; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()' "$url" 2>/dev/null; }

ping && exit 0
read -r host port < <("$python" -c 'import sys; from urllib.parse import urlsplit; u = urlsplit(sys.argv[1]); print(u.hostname or "127.0.0.1", u.port or 6379)' "$url")
case "$host" in
  127.*|localhost|::1) ;;
  *) echo "Redis does not answer at $url (not a local address, so not starting one)" >&2; exit 1 ;;
esac
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing redis-server (Debian package)..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "Redis is not running at $url and redis-server is not installed (apt-get install redis-server)" >&2
    exit 1
  fi
fi
dir=$(mktemp -d /tmp/webhooks-redis.XXXXXX)
echo "Starting redis-server on $host:$port (data in memory only, log in $dir/redis.log)"
redis-server --bind "$host" --port "$port" --daemonize yes --save "" --appendonly no \
  --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
for _ in $(seq 50); do ping && exit 0; sleep 0.1; done
echo "redis-server did not answer at $url; see $dir/redis.log" >&2
exit 1
