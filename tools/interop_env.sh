#!/usr/bin/env bash
# Builds the virtual environment of the interop tests: the real cync-lan controller
# (cync-lan==0.1.2 from PyPI) needs Python >= 3.12, the project runs on 3.11, so the tests start
# cync-lan from its own venv as a subprocess (tests/interop/cync_lan_harness.py).
#
# Usage: tools/interop_env.sh [VENV_DIR]      (default .venv-interop; env INTEROP_PYTHON picks
#        the interpreter, INTEROP_STRICT=1 makes a failure exit non-zero)
# Always writes VENV_DIR/.status: "ok", or "skip: <reason>" when there is no python3.12, the
# venv cannot be made or pip cannot install (offline); the interop tests skip with that reason.
# Without INTEROP_STRICT it exits 0 even then, so `make test` still runs everything else.
set -uo pipefail

VENV="${1:-.venv-interop}"
PIN="cync-lan==0.1.2"  # keep in step with CYNC_LAN_VERSION in tests/interop/cync_lan_harness.py
STATUS="$VENV/.status"
case "$VENV" in ""|/|.|..) echo "refusing venv dir '$VENV'" >&2; exit 2;; esac

finish() {  # finish <status line>
    mkdir -p "$VENV"
    printf '%s\n' "$1" > "$STATUS"
    case "$1" in
        ok) echo "interop venv ready: $VENV ($PIN)";;
        *) echo "interop venv NOT ready ($1); interop tests will be skipped" >&2
           [ "${INTEROP_STRICT:-0}" = 1 ] && exit 1;;
    esac
    exit 0
}

is_py312() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }

find_python() {
    local cand
    for cand in "${INTEROP_PYTHON:-}" "$(command -v python3.12 2>/dev/null)" \
                "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
                /usr/local/bin/python3.12 /usr/bin/python3.12; do
        if [ -n "$cand" ] && [ -x "$cand" ] && is_py312 "$cand"; then
            echo "$cand"
            return 0
        fi
    done
    return 1
}

# Up to date already: the pinned version imports.
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c \
    "import cync_lan, sys; sys.exit(cync_lan.__version__ != '${PIN#*==}')" >/dev/null 2>&1; then
    finish ok
fi

PY="$(find_python)" || finish "skip: no Python 3.12 found (python3.12 on PATH, pyenv, or INTEROP_PYTHON)"
echo "interop venv: $VENV from $PY"
rm -rf "$VENV"
"$PY" -m venv "$VENV" || finish "skip: '$PY -m venv $VENV' failed"
LOG="$(mktemp)"
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --retries 1 --timeout 20 "$PIN" >"$LOG" 2>&1; then
    reason="$(grep -E 'ERROR|error' "$LOG" | tail -n 1)"
    rm -f "$LOG"
    rm -rf "$VENV/bin" "$VENV/lib" "$VENV/include" "$VENV/pyvenv.cfg" "$VENV/lib64"
    finish "skip: pip install $PIN failed (offline?): ${reason:-see pip output}"
fi
rm -f "$LOG"
"$VENV/bin/python" -c 'import cync_lan' >/dev/null 2>&1 \
    || finish "skip: $PIN installed but 'import cync_lan' fails under $PY"
finish ok
