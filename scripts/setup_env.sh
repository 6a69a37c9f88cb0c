#!/usr/bin/env bash
# Create (once) and update the project environment in .venv/ at the repo root.
#   bash scripts/setup_env.sh            # runtime: CUDA machine -> requirements.txt, else the CPU set
#   bash scripts/setup_env.sh --test     # + what the test suite needs (CPU set, Debian tools)
# Re-running is cheap: pip runs only when a requirements file changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WANT_TEST=0
[[ "${1:-}" == "--test" ]] && WANT_TEST=1

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

if [[ $WANT_TEST == 1 ]] || ! command -v nvidia-smi >/dev/null 2>&1; then
  REQ=(-c constraints-cpu.txt -r requirements-cpu.txt)
  FILES="constraints-cpu.txt requirements-cpu.txt"
else
  REQ=(-r requirements.txt)
  FILES="requirements.txt"
fi
STAMP=.venv/.installed-$(cat $FILES | sha1sum | cut -c1-12)
if [[ ! -f $STAMP ]]; then
  echo "[setup] installing ${REQ[*]} into .venv (first run takes a few minutes)"
  .venv/bin/pip install -q --disable-pip-version-check "${REQ[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored" >&2) >/dev/null
  rm -f .venv/.installed-*
  touch "$STAMP"
fi

if [[ $WANT_TEST == 1 ]]; then
  # Debian tools used by the tests: espeak-ng (real speech), chromium (browser test of app.py).
  missing=()
  for tool in espeak-ng:espeak-ng chromium:chromium chromedriver:chromium-driver sox:sox; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
  done
  if (( ${#missing[@]} )); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      echo "[setup] apt-get install ${missing[*]}"
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "[setup] warning: missing ${missing[*]}; tests that need them will fail" >&2
    fi
  fi
fi
echo "[setup] environment ready: $ROOT/.venv"
