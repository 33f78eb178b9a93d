#!/usr/bin/env bash
# Compares, on one core and the same corpus and lexicon: kasuhara-guard's in-process `screen`,
# lindera tokenisation alone (the floor our pipeline is built on), and the Python pipeline a
# user might write instead (fugashi + ipadic + pyahocorasick, installed from PyPI into a venv).
#
#   scripts/compare.sh [CORPUS] [LEXICON_DIR]
# Defaults: ../shared/eval/dev/utterances.jsonl and dictionaries. KASUHARA_VENV overrides the
# venv location (default /tmp/kasuhara-compare-venv; reused when present).
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-../shared/eval/dev/utterances.jsonl}
lexicon=${2:-dictionaries}
venv=${KASUHARA_VENV:-/tmp/kasuhara-compare-venv}

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet fugashi ipadic pyahocorasick
fi

echo "== rust: screen and lindera alone (release, one thread)" >&2
rust=$(cargo run --quiet --release --locked --example throughput -- "$corpus" "$lexicon")
echo "$rust"
echo "== python: fugashi + ipadic + pyahocorasick" >&2
python=$("$venv/bin/python" scripts/compare_python.py "$corpus" "$lexicon")
echo "$python"

python3 - "$rust" "$python" <<'PY'
import json, sys
rust, py = json.loads(sys.argv[1]), json.loads(sys.argv[2])
screen, lindera, python = rust["screen_chars_per_s"], rust["lindera_chars_per_s"], py["chars_per_s"]
print(f"screen (kasuhara-guard)      {screen/1e6:8.3f} M chars/s")
print(f"lindera tokenisation alone   {lindera/1e6:8.3f} M chars/s   screen/lindera = {screen/lindera:.2f}")
print(f"python fugashi+pyahocorasick {python/1e6:8.3f} M chars/s   screen/python  = {screen/python:.2f}")
PY
