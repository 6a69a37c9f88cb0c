#!/usr/bin/env bash
# Many StableAvatar videos from one job file: the models load once per process, torchrun shares the
# jobs out over the GPUs (docs/batch.md). Paths relative to the repo; extra flags go to inference.py.
#   bash batch_inference.sh                                    # every GPU of this machine, examples/batch_jobs.jsonl
#   BATCH_FILE=my_jobs.csv OUTPUT_DIR=out bash batch_inference.sh
#   NPROC=1 bash batch_inference.sh                            # one GPU
#   NNODES=2 RDZV_HOST=node0.example bash batch_inference.sh   # two machines: run the same line on each
#   ULYSSES_DEGREE=2 bash batch_inference.sh                   # 2 GPUs per video (sequence parallel)
# A rerun skips the videos that exist; add --resume to continue the jobs that were interrupted.
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
NPROC=${NPROC:-$(( GPUS > 0 ? GPUS : 1 ))}
NNODES=${NNODES:-1}
ULYSSES_DEGREE=${ULYSSES_DEGREE:-1}
RING_DEGREE=${RING_DEGREE:-1}
BATCH_FILE=${BATCH_FILE:-examples/batch_jobs.jsonl}
OUTPUT_DIR=${OUTPUT_DIR:-output_batch}

if (( NNODES > 1 )); then
  # Multi-node: torchrun's c10d rendezvous on node 0 (any node can start first).
  LAUNCH=(--nnodes="$NNODES" --nproc_per_node="$NPROC" --rdzv_backend=c10d
          --rdzv_endpoint="${RDZV_HOST:?set RDZV_HOST to the address of one node, the same on every node}:${RDZV_PORT:-29500}"
          --rdzv_id="${RDZV_ID:-stableavatar-batch}")
else
  LAUNCH=(--standalone --nproc_per_node="$NPROC")
fi

bash scripts/setup_env.sh

.venv/bin/torchrun "${LAUNCH[@]}" inference.py \
  --batch_file="$BATCH_FILE" \
  --output_dir="$OUTPUT_DIR" \
  --config_path="deepspeed_config/wan2.1/wan_civitai.yaml" \
  --pretrained_model_name_or_path="checkpoints/Wan2.1-Fun-V1.1-1.3B-InP" \
  --transformer_path="${TRANSFORMER:-checkpoints/StableAvatar-1.3B/transformer3d-square.pt}" \
  --pretrained_wav2vec_path="checkpoints/wav2vec2-base-960h" \
  --ulysses_degree="$ULYSSES_DEGREE" \
  --ring_degree="$RING_DEGREE" \
  --seed=42 \
  --sample_steps=50 \
  --width=512 \
  --height=512 \
  --overlap_window_length=10 \
  --sample_text_guide_scale=3.0 \
  --sample_audio_guide_scale=5.0 \
  "$@"
