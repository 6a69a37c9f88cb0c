#!/usr/bin/env bash
# Create (once) the face-landmark environment .venv-mp/ at the repo root: mediapipe 0.10.21 with its bundled
# face mesh. It needs numpy<2 and protobuf<5, which clash with the main .venv, so it lives apart and the
# mask tools (wan/preprocess/landmarks.py) run it as a subprocess.
#   bash scripts/setup_mediapipe_env.sh          # idempotent: a working env is left alone
#   MEDIAPIPE_VENV=/some/dir bash scripts/...     # build it elsewhere (the Python side reads the same variable)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MEDIAPIPE_VENV:-$PWD/.venv-mp}
STAMP=$VENV/.installed-mediapipe-0.10.21
ready() { [[ -f $STAMP ]] && "$VENV/bin/python" -c "import mediapipe" >/dev/null 2>&1; }
ready && exit 0
# Two first uses at once (a test run and the app, say) must not build into the same folder: take a lock,
# then look again, since the other one may have finished the env while we waited.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${TMPDIR:-/tmp}/setup_mediapipe_env.$(printf %s "$VENV" | md5sum | cut -c1-12).lock"
  flock 9
  ready && exit 0
fi
# mediapipe 0.10.21 ships wheels for CPython 3.9-3.12 only; pick one of those.
PY=${PYTHON_MP:-}
if [[ -z $PY ]]; then
  for cand in python3.12 python3.11 python3.10 python3.9 python3; do
    if "$cand" -c 'import sys; sys.exit(not ((3, 9) <= sys.version_info[:2] <= (3, 12)))' >/dev/null 2>&1; then
      PY=$cand; break
    fi
  done
fi
if [[ -z $PY ]]; then
  echo "[setup_mediapipe_env] no Python 3.9-3.12 found (mediapipe 0.10.21 has no wheel for others); set PYTHON_MP=/path/to/python3.11" >&2
  exit 3  # "no usable interpreter": the Python side reports mediapipe as unavailable rather than broken
fi
echo "[setup_mediapipe_env] creating $VENV with $($PY --version) (about 20 s, 1 GB)" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "mediapipe==0.10.21" "numpy<2" "protobuf<5" >&2
"$VENV/bin/python" -c "import mediapipe, cv2, numpy; mediapipe.solutions.face_mesh.FaceMesh" >&2
touch "$STAMP"
