#!/usr/bin/env bash
# Runbook of the multi-GPU runs (issues 17 and 18) on a bare GPU box: one device call per line of
# docs/multi_gpu.md "Runs still to make on real GPUs".
#   bash bench/run_multi_gpu.sh GPUS [STAGES]        # STAGES: comma list of env,tests,e2e,bench,bench14b,train,batchprep,batch
#   bash bench/run_multi_gpu.sh 2 tests,e2e          # call 1 on 2 GPUs
#   bash bench/run_multi_gpu.sh 2 bench              # call 2 on 2 GPUs
#   bash bench/run_multi_gpu.sh 2 train              # DeepSpeed: the ZeRO-2 GPU test, then s/step + GiB of 1 GPU, ZeRO-2, ZeRO-3
#   bash bench/run_multi_gpu.sh 2 batch              # inference.py --batch_file: jobs per hour on 1 GPU and on 2
# `train` is train_test,train_1gpu,train_zero2,train_zero3 (each a stage of its own, also by name);
# DS_TORCH_ADAM=1 gives the DeepSpeed runs torch's AdamW instead of the JSON's compiled Adam.
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
# DeepSpeed (the train stages): PyPI has only its source; built with DS_BUILD_OPS=0 it is a pure-Python
# wheel (no op compiled: FusedAdam and DeepSpeedCPUAdam are built on the box by ninja + nvcc/g++ on
# first use, into TORCH_EXTENSIONS_DIR). The box has its small deps (einops, msgpack, ninja, numpy,
# packaging, psutil, py-cpuinfo, tqdm, nvidia-ml-py, accelerate) but not hjson and pydantic (+ its own):
#   DS_BUILD_OPS=0 python3 -m pip wheel --no-deps -w /tmp/dsw deepspeed==0.19.8
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d /tmp/dsw hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 \
#       annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
#   rm -rf /tmp/dsx && mkdir /tmp/dsx && for w in /tmp/dsw/*.whl; do (cd /tmp/dsx && unzip -qo "$w"); done
#   tar -cJf .carry/ds.tar.xz -C /tmp/dsx .
# (typing-extensions: pydantic 2.14 needs >= 4.16.) The 7 wheels are 5.1 MB (deepspeed 2.2, pydantic-core
# 2.3), packed as ds.tar.xz 3.2 MB; bench/device_env.sh unpacks it with the others.
# Sizes: the three xfuser wheels 1.1 MB, av.tar.xz 25 MB (the wheel is 36 MB), deps.tar.xz 5.5 MB,
# ds.tar.xz 3.2 MB, the tracked tree 30 MB: carry .whl .carry/deps.tar.xz .carry/av.tar.xz
# .carry/ds.tar.xz .carry/COMMIT (64.5 MB = 61.5 MiB) and leave .carry/fa3.tar.xz out, or the call
# passes the 64 MiB limit. The train stages need no PyAV and the batch stages no DeepSpeed.
set -uo pipefail
cd "$(dirname "$0")/.."
GPUS=${1:?usage: bash bench/run_multi_gpu.sh GPUS [env,tests,e2e,bench,bench14b,train,batchprep,batch]}
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
for m in ("xfuser", "yunchang", "distvae", "av", "flash_attn", "diffusers", "accelerate", "deepspeed"):
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

ds_bench() {  # ds_bench CONFIG: bench/train_step.py (1.3B, 512x512, 81 frames) under DeepSpeed, one process per GPU
  python3 -m torch.distributed.run --standalone --nproc_per_node "$GPUS" bench/train_step.py --deepspeed "$1" ${DS_TORCH_ADAM:+--torch_adam}
}

# The batch bench's random full-size weights (~20 GB) and compile cache: kept while the machine stays warm.
BATCH=(python3 bench/batch.py --gpus "1,$GPUS" --jobs $((GPUS > 4 ? GPUS : 4)) --ckpt_dir /tmp/rnd13b)

export -f env_check e2e ds_bench
export GPUS DS_TORCH_ADAM
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
RUN=()
for s in ${STAGES//,/ }; do
  if [[ $s == train ]]; then RUN+=(train_test train_1gpu train_zero2 train_zero3); else RUN+=("$s"); fi
done
for s in "${RUN[@]}"; do
  case $s in
    env) stage env 60 env_check ;;
    tests) stage tests 540 python3 -m pytest tests/distributed/test_multi_gpu.py -m gpu -k "${GPUS}gpu- ${TESTS_K:+and $TESTS_K}" -v -p no:cacheprovider ;;
    e2e) stage e2e 180 e2e ;;
    bench) stage bench 560 python3 bench/multi_gpu.py --gpus "$GPUS" --steps "${STEPS:-3}" ${MODES:+--modes "$MODES"} --timeout "$(left)" --log_dir "$LOGS/bench" ;;
    bench14b) stage bench14b 560 python3 bench/multi_gpu.py --gpus "$GPUS" --preset 14B --steps "${STEPS:-2}" ${MODES:+--modes "$MODES"} --timeout "$(left)" --log_dir "$LOGS/bench14b" ;;
    train_test) stage train_test 180 python3 -m pytest tests/training/test_trainer.py -m gpu -v -s -p no:cacheprovider ;;
    train_1gpu) stage train_1gpu 120 python3 bench/train_step.py ;;
    train_zero2) stage train_zero2 240 ds_bench deepspeed_config/zero_stage2_config.json ;;
    train_zero3) stage train_zero3 240 ds_bench deepspeed_config/zero_stage3_config.json ;;
    batchprep) stage batchprep 560 "${BATCH[@]}" --variants "" ;;
    batch) stage batch 560 "${BATCH[@]}" --variants batch ;;
    *) echo "unknown stage $s (env, tests, e2e, bench, bench14b, train[_test,_1gpu,_zero2,_zero3], batchprep, batch)" >&2 ;;
  esac
done
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
[[ -d $OUT/e2e ]] && tar -czf "$OUT/e2e.tgz" -C "$OUT" e2e && rm -rf "$OUT/e2e"
echo "[runbook] done in $((SECONDS - START))s; logs in $OUT/logs.tgz"
