#!/usr/bin/env bash
# 1.3B, square 512x512, one machine with 4 GPUs.
# Same flags as the original launcher; paths default to this repository's layout and can be
# overridden from the environment (MODEL_NAME, WAV2VEC, DATA, VALIDATION, OUTPUT_DIR).
set -euo pipefail
export TOKENIZERS_PARALLELISM=false
MODEL_NAME="${MODEL_NAME:-checkpoints/Wan2.1-Fun-V1.1-1.3B-InP}"
WAV2VEC="${WAV2VEC:-checkpoints/wav2vec2-base-960h}"
DATA="${DATA:-talking_face_data}"
VALIDATION="${VALIDATION:-validation}"
OUTPUT_DIR="${OUTPUT_DIR:-output_1B_square_dir}"
export NCCL_IB_DISABLE=1 NCCL_P2P_DISABLE=1

CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0,1,2,3}" accelerate launch train_1B_square.py \
  --config_path="deepspeed_config/wan2.1/wan_civitai.yaml" \
  --pretrained_model_name_or_path="$MODEL_NAME" \
  --pretrained_wav2vec_path="$WAV2VEC" \
  --validation_reference_path="$VALIDATION/reference.png" \
  --validation_driven_audio_path="$VALIDATION/audio.wav" \
  --train_data_square_dir="$DATA/video_square_path.txt" \
  --video_sample_n_frames=81 \
  --train_batch_size=1 \
  --video_repeat=1 \
  --gradient_accumulation_steps=1 \
  --dataloader_num_workers=4 \
  --num_train_epochs=1000 \
  --checkpointing_steps=2000 \
  --validation_steps=500 \
  --learning_rate=2e-05 \
  --lr_scheduler="constant_with_warmup" \
  --lr_warmup_steps=100 \
  --seed=42 \
  --output_dir="$OUTPUT_DIR" \
  --gradient_checkpointing \
  --mixed_precision="bf16" \
  --adam_weight_decay=3e-2 \
  --adam_epsilon=1e-10 \
  --vae_mini_batch=1 \
  --max_grad_norm=0.05 \
  --uniform_sampling \
  --motion_sub_loss \
  --low_vram \
  --train_mode="i2v"
