"""Structural numbers of StableAvatar / Wan2.1 that are not model-config fields."""

TEXT_LEN = 512  # umT5 tokens per prompt; contexts are zero-padded to this before text_embedding
CLIP_TOKENS = 257  # CLIP ViT-H/14 tokens (1 class + 16x16 patches) at the front of the DiT context
CLIP_DIM = 1280  # CLIP vision width fed to img_emb
AUDIO_DIM = 768  # wav2vec2-base hidden size
VAE_STRIDE = (4, 8, 8)  # (time, height, width) compression of the Wan VAE
LATENT_CHANNELS = 16
PATCH_SIZE = (1, 2, 2)
WAV2VEC_SAMPLE_RATE = 16000
DEFAULT_FPS = 25
AUDIO_SAMPLES_PER_FRAME = WAV2VEC_SAMPLE_RATE // DEFAULT_FPS  # 640
ADAPTER_EXPAND = 4  # audio tokens added on each side of a latent frame's audio window
ROPE_MAX_POSITIONS = 1024
ROPE_THETA = 10000.0

# The negative prompt the original inference hard-codes (a Chinese list of defects), kept verbatim.
NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)
