#!/usr/bin/env bash
# Runs the Python example clients against a real kasuhara-guard built from this checkout:
# makes a venv (target/py-venv, reused), installs grpcio + grpcio-tools from PyPI, and runs
# check_clients.py, which starts the server on free loopback ports and drives both clients.
#   examples/python/run.sh [path/to/kasuhara-guard]   (default: target/debug/kasuhara-guard)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${KASUHARA_PY_VENV:-$root/target/py-venv}"
bin="${1:-$root/target/debug/kasuhara-guard}"
if [ ! -x "$venv/bin/python" ]; then
  echo "python clients: creating venv $venv"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
exec "$venv/bin/python" "$here/check_clients.py" --bin "$bin" --lexicon-dir "$root/dictionaries"
