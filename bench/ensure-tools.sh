#!/usr/bin/env bash
# What `make bench` needs besides .venv: nginx (the receiver), wrk (its capacity) and
# redis-server (a throwaway broker). Installs the missing Debian packages when run as root.
set -euo pipefail
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-server >/dev/null || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing ${missing[*]} (Debian packages)..."
  # policy-rc.d (if present) keeps the packages' services from starting; the bench runs its own.
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "bench needs ${missing[*]}: apt-get install ${missing[*]}" >&2
  exit 1
fi
