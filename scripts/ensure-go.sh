#!/usr/bin/env bash
# The dashboard shows receivers a Go verifier; a test compiles and runs it. Install Go when missing.
set -euo pipefail
command -v go >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Go (Debian package golang-go) for the verifier snippet's test..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
else
  echo "go is not installed and cannot be installed here: the Go snippet's test will be skipped" >&2
fi
