#!/usr/bin/env bash
# paddle-lane: one entry point. Every verb sets up .venv when it is missing or stale.
#   ./run.sh setup | demo | test | prepare | train | infer | evaluate | check-submission | video | visualdl
#   ./run.sh report | compare | export | serve | worker | client | doctor
#   ./run.sh mutate [MODULE ...]   mutation score of the trusted modules (installs requirements-dev.lock)
# Environment:
#   PADDLE_LANE_PADDLE   pip spec for Paddle (default: the CPU pin in requirements.lock),
#                        e.g. "paddlepaddle-gpu==3.3.1" together with
#   PADDLE_LANE_PIP_EXTRA_INDEX  extra index holding that build (Paddle's own CUDA index).
#   PADDLE_LANE_PYTHON   interpreter used to create .venv (default: python3.11, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.paddle-lane-setup"

want_stamp() {
  { cat "$ROOT/requirements.lock" "$ROOT/requirements-nodeps.lock" "$ROOT/requirements-test.lock" "$ROOT/pyproject.toml"; echo "${PADDLE_LANE_PADDLE:-}"; } | sha256sum | cut -d' ' -f1
}

setup() {
  local py="${PADDLE_LANE_PYTHON:-}"
  if [[ -z "$py" ]]; then py="$(command -v python3.11 || command -v python3)"; fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup] creating $VENV with $py" >&2
    "$py" -m venv "$VENV"
  fi
  local reqs="$VENV/requirements.txt"
  if [[ -n "${PADDLE_LANE_PADDLE:-}" ]]; then
    grep -v '^paddlepaddle==' "$ROOT/requirements.lock" > "$reqs"
    echo "${PADDLE_LANE_PADDLE}" >> "$reqs"
  else
    cp "$ROOT/requirements.lock" "$reqs"
  fi
  local extra=()
  if [[ -n "${PADDLE_LANE_PIP_EXTRA_INDEX:-}" ]]; then extra=(--extra-index-url "$PADDLE_LANE_PIP_EXTRA_INDEX"); fi
  echo "[setup] installing pinned dependencies" >&2
  # an older set had opencv-python; two cv2 packages in one venv shadow each other
  if "$VENV/bin/python" -m pip show -q opencv-python >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip uninstall -y -q opencv-python
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${extra[@]}" -r "$reqs"
  # paddleseg's declared opencv pin conflicts with numpy 2 (see requirements-nodeps.lock)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-warn-conflicts -r "$ROOT/requirements-nodeps.lock"
  # test tools: in .venv, not in the images (they install requirements.lock alone)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-warn-conflicts -r "$ROOT/requirements-test.lock"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
  want_stamp > "$STAMP"
  echo "[setup] ready: $VENV" >&2
}

# Debian packages for tests (requirements-apt.txt: "package command" per line), installed when missing
ensure_test_packages() {
  local missing=()
  while read -r pkg cmd; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    command -v "$cmd" >/dev/null 2>&1 || [[ -x "/usr/sbin/$cmd" ]] || missing+=("$pkg")
  done < "$ROOT/requirements-apt.txt"
  (( ${#missing[@]} )) || return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian packages for tests: ${missing[*]}" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null; then
      echo "[setup] could not install ${missing[*]}: the tests that need them skip" >&2
    fi
  else
    echo "[setup] ${missing[*]} not installed (needs root and apt): the tests that need them skip" >&2
  fi
}

ensure_setup() {
  if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$(want_stamp)" ]]; then setup; fi
}

verb="${1:-help}"; shift || true
case "$verb" in
  setup) setup ;;
  test)
    ensure_setup
    ensure_test_packages
    cd "$ROOT"
    exec "$VENV/bin/python" -m pytest "$@" ;;
  mutate)
    ensure_setup
    if [[ ! -x "$VENV/bin/mutmut" ]]; then
      "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-dev.lock"
    fi
    cd "$ROOT"
    exec "$VENV/bin/python" quality/mutate.py "$@" ;;
  help|-h|--help)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
  *)
    ensure_setup
    # the name the user typed, so printed hints (e.g. the command that resumes a run) can be pasted back
    PADDLE_LANE_PROG="${PADDLE_LANE_PROG:-$0}" exec "$VENV/bin/paddle-lane" "$verb" "$@" ;;
esac
