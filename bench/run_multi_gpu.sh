#!/usr/bin/env bash
# Runbook of the multi-GPU runs (issues 17 and 18) on a bare GPU box: one device call per line of
# docs/multi_gpu.md "Runs still to make on real GPUs".
#   bash bench/run_multi_gpu.sh GPUS [STAGES]        # STAGES: comma list of env,tests,e2e,bench,bench14b
#   bash bench/run_multi_gpu.sh 2 tests,e2e          # call 1 on 2 GPUs
#   bash bench/run_multi_gpu.sh 2 bench              # call 2 on 2 GPUs
# Logs go to $OUT/logs (packed into $OUT/logs.tgz at the end, as the device tool brings back at most
# 8 files), bench rows to $OUT/<device>.jsonl (bench.common.record). Each stage runs under `timeout`,
# cut to what is left of BUDGET_S (default 570 s: one call is at most 600 s).
#
# Packages. bench/device_env.sh unpacks .carry/*.tar.xz (diffusers, librosa, torchao, fa3-fwd ...)
# into /tmp/site and exports NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
# NVSHMEM_DISABLE_NVLS=1; torchrun children inherit them (and bench/multi_gpu.py and
# tests/distributed/workers.py set them again in the children's environment).
# Window/CFG-row parallelism (the default layout) imports no xfuser. Sequence parallelism on CUDA
# (--ulysses_degree/--ring_degree > 1: layouts ulysses, ring, usp, *_fsdp, hybrid) imports
# xfuser.core.distributed and xfuser.core.long_ctx_attention, which import the whole xfuser package
# (its diffusers pipelines and distvae's VAE) and yunchang; triton is on the box, flash-attn is not
# needed (PyTorch's flash kernel is used without it). The mp4 writer needs PyAV. Not on the box, so
# carried (prepare once on the host, in the repo root; both folders are git-ignored there):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl xfuser==0.7.0 yunchang==0.6.4 distvae==0.1.0
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d /tmp/avw av==18.1.0
#   rm -rf /tmp/avx && mkdir /tmp/avx && (cd /tmp/avx && unzip -q /tmp/avw/av-18.1.0-*.whl) && tar -cJf .carry/av.tar.xz -C /tmp/avx .
#   git rev-parse --short=10 HEAD > .carry/COMMIT
# Sizes: the three wheels 1.1 MB, av.tar.xz 25 MB (the wheel is 36 MB), deps.tar.xz 5.5 MB, the
# tracked tree 30 MB: carry .whl .carry/deps.tar.xz .carry/av.tar.xz .carry/COMMIT and leave
# .carry/fa3.tar.xz out, or the call passes the 64 MiB limit. DeepSpeed (training runs) is not covered.
set -uo pipefail
cd "$(dirname "$0")/.."
GPUS=${1:?usage: bash bench/run_multi_gpu.sh GPUS [env,tests,e2e,bench,bench14b]}
STAGES=${2:-tests,e2e}
BUDGET_S=${BUDGET_S:-570}
OUT=${OUT:-$PWD/output_multi_gpu}
LOGS=$OUT/logs
START=$SECONDS
mkdir -p "$LOGS"

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
source bench/device_env.sh
export OUT NCCL_NVLS_ENABLE TORCH_SYMM_MEM_DISABLE_MULTICAST NVSHMEM_DISABLE_NVLS

left() { echo $((BUDGET_S - (SECONDS - START))); }
stage() {  # stage NAME SECONDS COMMAND...: run under timeout (cut to the budget left), log to $LOGS/NAME.log
  local name=$1 limit=$2
  shift 2
  ((limit > $(left))) && limit=$(left)
  if ((limit < 20)); then
    echo "[runbook] $name: skipped, ${limit}s of the budget left" | tee -a "$LOGS/summary.txt"
    return
  fi
  echo "[runbook] $name: up to ${limit}s: $*"
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=15 "$limit" bash -c '"$@"' _ "$@" 2>&1 | tee "$LOGS/$name.log"  # bash -c: the stage may be a function
  local rc=${PIPESTATUS[0]}
  echo "[runbook] $name: exit $rc after $((SECONDS - t0))s" | tee -a "$LOGS/summary.txt"
}

env_check() {
  nvidia-smi -L
  python3 - <<'PY'
import importlib, torch
print("GPUs:", torch.cuda.device_count(), "torch", torch.__version__, "cuda", torch.version.cuda)
for m in ("xfuser", "yunchang", "distvae", "av", "flash_attn", "diffusers"):
    try:
        mod = importlib.import_module(m)
        print("  ok ", m, getattr(mod, "__version__", ""))
    except Exception as e:
        print("  -- ", m, type(e).__name__, str(e)[:160])
PY
}

e2e() {  # multiple_gpu_inference.sh (NPROC=GPUS) on the tiny folder: one mp4 with audio, from rank 0 only
  [[ -e checkpoints/Wan2.1-Fun-V1.1-1.3B-InP ]] || python3 -c "from wan.testing.tiny_checkpoints import write_tiny_checkpoints as w; w('checkpoints')"
  if [[ ! -x .venv/bin/python ]]; then  # the box's Python as .venv, so scripts/setup_env.sh has nothing to install
    python3 -m venv --system-site-packages --without-pip .venv
    ln -sf "$(command -v torchrun)" .venv/bin/torchrun
    touch ".venv/.installed-$(sha1sum <requirements.txt | cut -c1-12)"
  fi
  python3 -c "import soundfile as sf; from wan.audio import load_audio; sf.write('/tmp/speech_2s.wav', load_audio('examples/case-2/audio.wav')[:32000], 16000)"
  rm -rf "$OUT/e2e"
  AUDIO=/tmp/speech_2s.wav OUTPUT_DIR=$OUT/e2e NPROC=$GPUS MASTER_PORT=29533 bash multiple_gpu_inference.sh \
    --config_path=checkpoints/wan_civitai_tiny.yaml --width=64 --height=64 --clip_sample_n_frames=17 --overlap_window_length=2 --sample_steps=2 || return 1
  python3 - "$OUT/e2e" <<'PY'
import sys, av
from pathlib import Path
files = sorted(p.name for p in Path(sys.argv[1]).iterdir())
mp4s = [f for f in files if f.endswith(".mp4")]
assert len(mp4s) == 1 and len(files) == 1, f"expected one mp4 and nothing else, found {files}"
with av.open(str(Path(sys.argv[1], mp4s[0]))) as c:
    v, a = c.streams.video, c.streams.audio
    assert len(v) == 1 and len(a) == 1, f"streams: video {len(v)}, audio {len(a)}"
    print(f"e2e OK: {mp4s[0]}, {v[0].frames} frames, audio {a[0].codec_context.name}")
PY
}

export -f env_check e2e
export GPUS
for s in ${STAGES//,/ }; do
  case $s in
    env) stage env 60 env_check ;;
    tests) stage tests 540 python3 -m pytest tests/distributed/test_multi_gpu.py -m gpu -k "${GPUS}gpu- ${TESTS_K:+and $TESTS_K}" -v -p no:cacheprovider ;;
    e2e) stage e2e 180 e2e ;;
    bench) stage bench 560 python3 bench/multi_gpu.py --gpus "$GPUS" --steps "${STEPS:-3}" ${MODES:+--modes "$MODES"} --timeout "$(left)" --log_dir "$LOGS/bench" ;;
    bench14b) stage bench14b 560 python3 bench/multi_gpu.py --gpus "$GPUS" --preset 14B --steps "${STEPS:-2}" ${MODES:+--modes "$MODES"} --timeout "$(left)" --log_dir "$LOGS/bench14b" ;;
    *) echo "unknown stage $s (env, tests, e2e, bench, bench14b)" >&2 ;;
  esac
done
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
[[ -d $OUT/e2e ]] && tar -czf "$OUT/e2e.tgz" -C "$OUT" e2e && rm -rf "$OUT/e2e"
echo "[runbook] done in $((SECONDS - START))s; logs in $OUT/logs.tgz"
