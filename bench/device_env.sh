# Source this on a bare GPU box (no network) before the benches/GPU tests:
#   source bench/device_env.sh
# Unpacks the packages carried as .carry/*.tar.xz (unpacked wheels: diffusers, omegaconf, librosa
# and its small deps, torchao, fa3-fwd; PyAV where it fits) into /tmp/site and puts it and the repo
# on PYTHONPATH. Results of the benches go to $OUT (the device tool's folder) when it is set.
set -e
mkdir -p /tmp/site
for t in .carry/*.tar.xz; do [ -e "$t" ] && tar -xJf "$t" -C /tmp/site; done
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
[ -n "${OUT:-}" ] && export BENCH_RESULTS_DIR=$OUT
[ -f .carry/COMMIT ] && export BENCH_COMMIT=$(cat .carry/COMMIT)
python3 - <<'PY'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
for m in ("diffusers", "torchao", "fa3_fwd_interface", "librosa", "av"):
    try:
        importlib.import_module(m); print("  ok ", m)
    except Exception as e:
        print("  -- ", m, type(e).__name__, str(e)[:120])
PY
set +e
