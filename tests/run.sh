#!/usr/bin/env bash
# The whole test suite, from a fresh clone: a venv with the project and its test tools, a real
# llama-server (built from source once, then cached under ~/.cache/turnout), lint, types, pytest.
#   bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}

# Real servers some tests run against (Debian packages): Redis for shared rate limits,
# Prometheus (and promtool) for the scrape test and deploy/ validation.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
# PostgreSQL for the shared store (its binaries live off PATH, in /usr/lib/postgresql/*/bin).
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
command -v prometheus >/dev/null || missing+=(prometheus)
# Headless Chromium for the dashboard test (Debian's package; no browser downloads).
command -v chromium >/dev/null || missing+=(chromium fonts-dejavu-core)
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,memory,otel,postgres]'
PYTHON=.venv/bin/python bash tests/engines/build_llama_server.sh
PYTHON="$PY" bash tests/engines/setup_mlx.sh  # optional: never fails, MLX tests skip

.venv/bin/ruff check gateway adapters tests bench
.venv/bin/ruff format --check gateway adapters tests bench
.venv/bin/mypy  # strict, over gateway, adapters, tests and bench (pyproject.toml [tool.mypy])
exec .venv/bin/python -m pytest "$@"
