#!/usr/bin/env bash
# Create the project's virtual environment, installing Debian's venv support if missing.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
if ! "$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "cargohold needs Python 3.11 or newer as '$python'" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv
    "$python" -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --upgrade pip
fi
