#!/usr/bin/env bash
# Installs the LiteLLM proxy in its own venv for bench/proxy.py --litellm. Idempotent: a venv
# that already imports the pinned version is left alone; downloads are cached by pip.
#
# Why not `pip install 'litellm[proxy]'`: 1.109.x requires certifi>=2026.10.19 and
# litellm-proxy-extras==0.4.113, neither of which the package index here serves. So the wheel is
# installed with --no-deps, and its own declared dependencies (base + the `proxy` extra) are
# installed separately with those two pins relaxed to the newest versions that exist.
#
# Prints the venv's python path on its last line.
set -euo pipefail

LITELLM_VERSION="${LITELLM_VERSION:-1.109.1}"
CERTIFI_PIN="${CERTIFI_PIN:-certifi==2026.10.18}"
EXTRAS_PIN="${EXTRAS_PIN:-litellm-proxy-extras==0.4.110}"
VENV="${LITELLM_VENV:-$HOME/.cache/turnout/bench/litellm-venv}"
PY="$VENV/bin/python"
# Without this LiteLLM tries to download its model price map at import time (no network here).
export LITELLM_LOCAL_MODEL_COST_MAP=True

installed_version() {
  "$PY" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || true
}

# Written only after the proxy imported cleanly: a half-finished install is redone.
STAMP="$VENV/.turnout-bench-litellm-$LITELLM_VERSION"

if [[ -x "$PY" && -f "$STAMP" && "$(installed_version)" == "$LITELLM_VERSION" ]]; then
  echo "litellm $LITELLM_VERSION already installed in $VENV" >&2
  echo "$PY"
  exit 0
fi

echo "installing litellm[proxy] $LITELLM_VERSION into $VENV (takes a few minutes)" >&2
[[ -x "$PY" ]] || python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip packaging >&2

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download -q --no-deps -d "$work" "litellm==$LITELLM_VERSION" >&2
wheel="$(ls "$work"/litellm-*.whl)"

# The wheel's own requirements for the base package and the `proxy` extra, with the two
# unsatisfiable pins replaced.
"$PY" - "$wheel" "$CERTIFI_PIN" "$EXTRAS_PIN" > "$work/requirements.txt" <<'PYEOF'
import sys, zipfile
from email.parser import Parser
from packaging.requirements import Requirement

wheel, certifi_pin, extras_pin = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(z.read(name).decode())
replace = {"certifi": certifi_pin, "litellm-proxy-extras": extras_pin}
for line in meta.get_all("Requires-Dist") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": "proxy"}):
        continue
    req.marker = None
    print(replace.get(req.name.lower(), str(req)))
PYEOF

"$PY" -m pip install -q -r "$work/requirements.txt" >&2
"$PY" -m pip install -q --no-deps "$wheel" >&2
"$PY" -c 'import litellm.proxy.proxy_server' >&2
touch "$STAMP"
echo "litellm $(installed_version) ready in $VENV" >&2
echo "$PY"
