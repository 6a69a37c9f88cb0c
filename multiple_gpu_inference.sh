#!/usr/bin/env bash
# Multi-GPU StableAvatar inference on one node (the original's flags; paths relative to the repo).
#   bash multiple_gpu_inference.sh                      # 4 GPUs, windows + CFG rows spread over them (the default)
#   NPROC=2 bash multiple_gpu_inference.sh              # 2 GPUs
#   ULYSSES_DEGREE=2 RING_DEGREE=2 FSDP_DIT=1 bash multiple_gpu_inference.sh   # the original's layout: sequence parallel 2x2 + FSDP
# ulysses x ring must equal NPROC when either is > 1 (1 x 1 = window/CFG-row parallelism); see docs/multi_gpu.md.
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false
NPROC=${NPROC:-4}
ULYSSES_DEGREE=${ULYSSES_DEGREE:-1}
RING_DEGREE=${RING_DEGREE:-1}
MASTER_PORT=${MASTER_PORT:-29500}
MODEL_NAME=checkpoints/Wan2.1-Fun-V1.1-1.3B-InP
TRANSFORMER=${TRANSFORMER:-checkpoints/StableAvatar-1.3B/transformer3d-square.pt}
WAV2VEC=checkpoints/wav2vec2-base-960h
REFERENCE=${REFERENCE:-examples/case-1/reference.png}
AUDIO=${AUDIO:-examples/case-2/audio.wav}  # the only example track shipped here (40 s of speech)
OUTPUT_DIR=${OUTPUT_DIR:-output_infer}
FSDP=()
[[ ${FSDP_DIT:-0} == 1 ]] && FSDP=(--fsdp_dit)

missing=()
for path in "$MODEL_NAME" "$TRANSFORMER" "$WAV2VEC"; do
  [[ -e $path ]] || missing+=("$path")
done
if (( ${#missing[@]} )); then
  echo "multiple_gpu_inference.sh: missing checkpoints: ${missing[*]}" >&2
  echo "  download them as described in checkpoints/README.md, e.g." >&2
  echo "  pip install -U 'huggingface_hub>=0.34' && hf download FrancisRing/StableAvatar --local-dir ./checkpoints" >&2
  exit 1
fi
for path in "$REFERENCE" "$AUDIO"; do
  if [[ ! -f $path ]]; then
    echo "multiple_gpu_inference.sh: input not found: $path (set REFERENCE=... / AUDIO=...)" >&2
    exit 1
  fi
done
if (( ULYSSES_DEGREE * RING_DEGREE > 1 && ULYSSES_DEGREE * RING_DEGREE != NPROC )); then
  echo "multiple_gpu_inference.sh: ULYSSES_DEGREE x RING_DEGREE = $((ULYSSES_DEGREE * RING_DEGREE)) must equal NPROC=$NPROC" >&2
  exit 1
fi

bash scripts/setup_env.sh

.venv/bin/torchrun --nproc_per_node="$NPROC" --nnodes=1 --node_rank=0 --master_addr=localhost --master_port="$MASTER_PORT" inference.py \
  --config_path="deepspeed_config/wan2.1/wan_civitai.yaml" \
  --pretrained_model_name_or_path="$MODEL_NAME" \
  --transformer_path="$TRANSFORMER" \
  --pretrained_wav2vec_path="$WAV2VEC" \
  --validation_reference_path="$REFERENCE" \
  --validation_driven_audio_path="$AUDIO" \
  --output_dir="$OUTPUT_DIR" \
  --validation_prompts="A woman in her fifties with chin-length light brown hair, small pearl earrings and a dark blue jacket talks animatedly to the camera; behind her a soft-focus city skyline with a domed building, even bright studio lighting, the look of a live TV interview." \
  --seed=42 \
  --ulysses_degree="$ULYSSES_DEGREE" \
  --ring_degree="$RING_DEGREE" \
  "${FSDP[@]}" \
  --motion_frame=25 \
  --sample_steps=50 \
  --width=512 \
  --height=512 \
  --overlap_window_length=10 \
  --sample_text_guide_scale=3.0 \
  --sample_audio_guide_scale=5.0 \
  "$@"
