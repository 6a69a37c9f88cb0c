"""The page's texts in English and Chinese (the language toggle relabels every component)."""

from __future__ import annotations

LANGUAGES = ("English", "中文")

# key -> (English, 中文); labels of inputs/outputs and texts of buttons.
LABELS: dict[str, tuple[str, str]] = {
    "language": ("Language", "语言"),
    "settings": ("Model Settings", "模型设置"),
    "memory_mode": ("GPU Memory Mode", "显存模式"),
    "teacache_threshold": ("TeaCache Threshold", "teacache threshold"),
    "teacache_skip": ("Skip Start Steps", "跳过开始步数"),
    "clip_length": ("Clip Sample Frames", "Clip采样帧数"),
    "sample_solver": ("Sampler", "采样器"),
    "sample_shift": ("Sample Shift", "sample shift"),
    "lora_file": ("LoRA File (optional)", "LoRA文件（可选）"),
    "lora_scale": ("LoRA Scale", "LoRA强度"),
    "tab_generate": ("StableAvatar", "StableAvatar"),
    "tab_extract": ("Audio Extraction", "音频提取"),
    "tab_separate": ("Vocal Separation", "人声分离"),
    "image": ("Reference Image", "上传图片"),
    "audio": ("Driving Audio", "上传音频"),
    "prompt": ("Prompt", "提示词"),
    "negative_prompt": ("Negative Prompt", "负面提示词"),
    "width": ("Width", "宽度"),
    "height": ("Height", "高度"),
    "swap": ("🔄 Swap Width/Height", "🔄 交换宽高"),
    "adjust": ("Adjust Size to Image", "根据图片调整宽高"),
    "steps": ("Sampling Steps (50 recommended)", "采样步数（推荐50步）"),
    "text_guide_scale": ("Text Guidance Scale", "text guidance scale"),
    "audio_guide_scale": ("Audio Guidance Scale", "audio guidance scale"),
    "overlap": ("Overlap Window Length", "overlap window length"),
    "seed": ("Seed (-1 for random)", "种子，-1为随机"),
    "generate": ("🎬 Generate", "🎬 开始生成"),
    "status": ("Status", "提示信息"),
    "video_output": ("Generated Video", "生成结果"),
    "download": ("Download", "下载"),
    "seed_output": ("Seed Used", "使用的种子"),
    "video_input": ("Upload Video", "上传视频"),
    "extract": ("🎬 Extract Audio", "🎬 开始提取"),
    "extract_status": ("Status", "提示信息"),
    "extracted_audio": ("Extracted Audio", "提取结果"),
    "use_extracted": ("Use as Driving Audio", "用作驱动音频"),
    "separate_input": ("Upload Audio", "上传音频"),
    "separate": ("🎬 Separate Vocals", "🎬 开始分离"),
    "separate_status": ("Status", "提示信息"),
    "separated_audio": ("Vocals", "人声"),
    "use_separated": ("Use as Driving Audio", "用作驱动音频"),
}

INFOS: dict[str, tuple[str, str]] = {
    "memory_mode": (
        "model_full_load needs the most GPU memory (~25 GB for 1.3B at 512x512); model_cpu_offload ~13 GB; sequential_cpu_offload the least, slowest",
        "model_full_load 占用显存最多（约25G），model_cpu_offload 约13G，sequential_cpu_offload 最少但最慢",
    ),
    "teacache_threshold": ("0.1 recommended; 0 turns TeaCache off", "推荐0.1，0为禁用teacache加速"),
    "teacache_skip": ("5 recommended", "推荐5"),
    "clip_length": ("Frames per window, 4n+1: 81 = 3.2 s at 25 fps", "每个窗口的帧数，必须为4n+1，81=3.2秒@25fps"),
    "sample_solver": (
        "euler: the original's sampler; unipc / dpm++: closer to the 50-step result at 10-20 steps",
        "euler为原版采样器；unipc / dpm++ 在10-20步时更接近50步的结果",
    ),
    "sample_shift": ("5.0 = the model's default", "5.0为模型默认值"),
    "lora_scale": (
        "LoRA files from our training, diffusers/peft, kohya or ComfyUI are merged into the model; a new file or scale reloads it",
        "支持本项目训练、diffusers/peft、kohya、ComfyUI格式的LoRA，合并进模型；更换文件或强度会重新加载模型",
    ),
}


def text(key: str, language: str) -> str:
    """The label of ``key`` in ``language`` (English for anything but 中文)."""
    return LABELS[key][1 if language == "中文" else 0]


def info(key: str, language: str) -> str | None:
    pair = INFOS.get(key)
    return None if pair is None else pair[1 if language == "中文" else 0]
