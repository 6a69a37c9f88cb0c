#!/usr/bin/env bash
# Single-GPU StableAvatar inference on an example (the original's flags; paths relative to the repo).
#   bash inference.sh                                        # examples/case-1 photo + the 40 s speech of examples/case-2
#                                                            #   -> output_infer/video_with_audio.mp4
#   REFERENCE=my.png AUDIO=my.wav OUTPUT_DIR=out bash inference.sh
# Weights go in checkpoints/ (see checkpoints/README.md). Every flag: .venv/bin/python inference.py --help
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false
MODEL_NAME=checkpoints/Wan2.1-Fun-V1.1-1.3B-InP
TRANSFORMER=${TRANSFORMER:-checkpoints/StableAvatar-1.3B/transformer3d-square.pt}
WAV2VEC=checkpoints/wav2vec2-base-960h
REFERENCE=${REFERENCE:-examples/case-1/reference.png}
AUDIO=${AUDIO:-examples/case-2/audio.wav}  # the only example track shipped here (40 s of speech)
OUTPUT_DIR=${OUTPUT_DIR:-output_infer}

missing=()
for path in "$MODEL_NAME" "$TRANSFORMER" "$WAV2VEC"; do
  [[ -e $path ]] || missing+=("$path")
done
if (( ${#missing[@]} )); then
  echo "inference.sh: missing checkpoints: ${missing[*]}" >&2
  echo "  download them as described in checkpoints/README.md, e.g." >&2
  echo "  pip install -U 'huggingface_hub>=0.34' && hf download FrancisRing/StableAvatar --local-dir ./checkpoints" >&2
  exit 1
fi
for path in "$REFERENCE" "$AUDIO"; do
  if [[ ! -f $path ]]; then
    echo "inference.sh: input not found: $path (set REFERENCE=... / AUDIO=..., e.g. AUDIO=examples/case-2/audio.wav)" >&2
    exit 1
  fi
done

bash scripts/setup_env.sh  # creates .venv on first use (a few GB), then reuses it: only once the inputs are there

CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} .venv/bin/python inference.py \
  --config_path="deepspeed_config/wan2.1/wan_civitai.yaml" \
  --pretrained_model_name_or_path="$MODEL_NAME" \
  --transformer_path="$TRANSFORMER" \
  --pretrained_wav2vec_path="$WAV2VEC" \
  --validation_reference_path="$REFERENCE" \
  --validation_driven_audio_path="$AUDIO" \
  --output_dir="$OUTPUT_DIR" \
  --validation_prompts="A woman in her fifties with chin-length light brown hair, small pearl earrings and a dark blue jacket talks animatedly to the camera; behind her a soft-focus city skyline with a domed building, even bright studio lighting, the look of a live TV interview." \
  --seed=42 \
  --ulysses_degree=1 \
  --ring_degree=1 \
  --motion_frame=25 \
  --sample_steps=50 \
  --width=512 \
  --height=512 \
  --overlap_window_length=5 \
  --clip_sample_n_frames=81 \
  --GPU_memory_mode="model_full_load" \
  --sample_text_guide_scale=3.0 \
  --sample_audio_guide_scale=5.0 \
  "$@"
