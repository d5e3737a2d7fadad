#!/usr/bin/env bash
# Install Apple's MLX with mlx-lm (CPU build on Linux) in its own venv, once, for the MLX engine
# tests (tests/test_mlx_engine.py), and cache it outside the checkout.
#
# MLX is optional: this script never fails the test run. When the install or its smoke test fails
# it prints why, records the reason in <venv>/.unavailable (the tests skip quoting it) and exits 0.
# ~35 s on 2 cores (pip, network bound; ~360 MB), then cached under
# $TURNOUT_CACHE/mlx-venv/<mlx>-<mlx-lm>/ and reused while those versions stay the same.
#
#   bash tests/engines/setup_mlx.sh            # TURNOUT_MLX=0 skips it (the tests then skip)
set -uo pipefail

CACHE=${TURNOUT_CACHE:-$HOME/.cache/turnout}
MLX_VERSION=${MLX_VERSION:-0.32.4}        # keep in step with tests/engines/engines.py
MLX_LM_VERSION=${MLX_LM_VERSION:-0.32.2}
GGUF_SPEC=${MLX_GGUF_SPEC:-gguf>=0.17}     # tiny_mlx.py shares the vocab reader of tiny_gguf.py
PY=${PYTHON:-python3}
OUT="$CACHE/mlx-venv/$MLX_VERSION-$MLX_LM_VERSION"

unavailable() {
  mkdir -p "$OUT"
  printf '%s\n' "$1" >"$OUT/.unavailable"
  echo "MLX unavailable, its tests will skip: $1" >&2
  exit 0
}

# The last lines of the install log that say something (pip's index warnings do not).
log_tail() { grep -v '^WARNING: Location' "$LOG" | tail -"$1" | tr '\n' ' '; }

if [[ -f $OUT/.ok && -x $OUT/bin/mlx_lm.server ]]; then
  echo "mlx $MLX_VERSION / mlx-lm $MLX_LM_VERSION cached at $OUT"
  exit 0
fi
[[ ${TURNOUT_MLX:-1} != 0 ]] || unavailable "disabled by TURNOUT_MLX=0"

case "$(uname -s)" in
  Linux) MLX_SPEC="mlx[cpu]==$MLX_VERSION" ;;  # the Linux wheels need the CPU backend extra
  Darwin) MLX_SPEC="mlx==$MLX_VERSION" ;;      # Metal backend built in
  *) unavailable "no MLX wheels for $(uname -s)" ;;
esac

started=$SECONDS
mkdir -p "$OUT"
LOG="$OUT/install.log"
[[ -x $OUT/bin/python ]] || "$PY" -m venv "$OUT" >"$LOG" 2>&1 ||
  unavailable "cannot create a venv with $PY: $(log_tail 3)"
# A bounded install: a hung download must not eat CI's budget.
LIMIT=${MLX_INSTALL_TIMEOUT:-900}
timeout "$LIMIT" "$OUT/bin/python" -m pip install --quiet --disable-pip-version-check \
  "$MLX_SPEC" "mlx-lm==$MLX_LM_VERSION" "$GGUF_SPEC" >>"$LOG" 2>&1
status=$?
((status != 124)) || unavailable "pip install $MLX_SPEC mlx-lm==$MLX_LM_VERSION took over ${LIMIT}s"
((status == 0)) || unavailable "pip install $MLX_SPEC mlx-lm==$MLX_LM_VERSION failed: $(log_tail 3)"

# Smoke test: the compute backend loads on this CPU and the server's entry point imports.
"$OUT/bin/python" -c 'import mlx.core as mx; assert (mx.array([1, 2]) + 1).tolist() == [2, 3]' \
  >>"$LOG" 2>&1 || unavailable "mlx does not run here: $(log_tail 3)"
"$OUT/bin/mlx_lm.server" --help >>"$LOG" 2>&1 ||
  unavailable "mlx_lm.server does not start: $(log_tail 3)"

rm -f "$OUT/.unavailable"
touch "$OUT/.ok"
echo "mlx $MLX_VERSION / mlx-lm $MLX_LM_VERSION installed at $OUT in $((SECONDS - started))s"
