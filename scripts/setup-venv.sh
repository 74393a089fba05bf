#!/usr/bin/env bash
# Create .venv with Python 3.11+ and install a requirements file into it.
set -euo pipefail
python=${1:-python3}
requirements=${2:-requirements.txt}
cd "$(dirname "$0")/.."

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Python 3.11 or newer is needed; $python is $("$python" --version 2>&1)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$python" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "Installing python3-venv..."
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      "$python" -m venv .venv
    else
      echo "Cannot create a virtualenv: install python3-venv" >&2
      exit 1
    fi
  fi
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r "$requirements"
# The workers run with PYTHONOPTIMIZE=2 (Procfile: no docstrings in memory, 5 MB a worker): the
# libraries' bytecode for it is compiled once here rather than at every start (where the
# environment sets PYTHONDONTWRITEBYTECODE, nothing compiled at a start is kept).
.venv/bin/python -m compileall -q -o 2 -j 0 .venv/lib/python*/site-packages >/dev/null || true
