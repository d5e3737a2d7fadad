#!/usr/bin/env bash
# Every benchmark, one after the other (never two at once on two cores):
#   1. bench.proxy: direct vs turnout vs LiteLLM, TTFT, RSS after 100k requests, time to ready
#   2. bench.http_clients: the httpx vs aiohttp comparison behind the data-plane client choice
#
#   bash bench/run.sh            # the full run, about 12 minutes
#   bash bench/run.sh --quick    # smoke run, about 3 minutes
#   NO_LITELLM=1 bash bench/run.sh
#
# Installs what it needs the first time: wrk (Debian package), the project venv with the bench
# extra, and LiteLLM in its own venv (bench/setup_litellm.sh, cached under ~/.cache/turnout).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

quick=()
seconds=10
if [[ "${1:-}" == "--quick" ]]; then
  quick=(--quick)
  seconds=3
fi

if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -c 'import gateway, httpx, aiohttp' 2>/dev/null \
  || .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'

litellm=(--litellm)
if [[ -n "${NO_LITELLM:-}" ]]; then
  litellm=()
else
  bash bench/setup_litellm.sh >/dev/null
fi

.venv/bin/python -m bench.proxy "${litellm[@]}" "${quick[@]}"
echo
.venv/bin/python -m bench.http_clients --seconds "$seconds"
