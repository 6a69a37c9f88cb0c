"""load_pipeline: the one place that turns the checkpoint folders into a ready StableAvatarPipeline.

Mirrors ``inference.py`` of the original: umT5 (bf16 on GPU), VAE (float32), CLIP (float32), the DiT
(bf16: Wan base + StableAvatar ``.pt``), wav2vec2 (float32), the flow-matching scheduler from the
yaml's ``scheduler_kwargs``. Every file is checked before anything large is read
(``CheckpointPaths.validate``), so a missing or truncated file fails in a second with its name and
the command that downloads it.

The yaml (``--config_path``, ``deepspeed_config/wan2.1/wan_civitai.yaml``) supplies subpaths,
``text_encoder_kwargs`` (the umT5 size) and ``scheduler_kwargs`` as in the original. Two
extensions let small test folders describe themselves: ``image_encoder_kwargs`` may carry CLIP
config fields and ``vae_kwargs`` VAE config fields; the released yaml has neither, so real runs use
the real sizes.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers.utils import logging

from wan.pipelines.checkpoints import CheckpointPaths

if TYPE_CHECKING:
    from wan.models.lora import LoraSpec

logger = logging.get_logger(__name__)

MEMORY_MODES = ("model_full_load", "model_cpu_offload", "model_cpu_offload_and_qfloat8", "sequential_cpu_offload")
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "deepspeed_config" / "wan2.1" / "wan_civitai.yaml"


def read_yaml_config(config_path: str | os.PathLike | None) -> dict[str, Any]:
    """The civitai yaml as a plain dict ({} if there is none); unreadable -> error naming the file."""
    path = Path(config_path) if config_path else DEFAULT_CONFIG
    if not path.is_file():
        if config_path:
            raise FileNotFoundError(f"--config_path {path} not found (the repo ships deepspeed_config/wan2.1/wan_civitai.yaml)")
        return {}
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    except Exception as exc:
        raise ValueError(f"cannot parse {path}: {exc}") from exc


def _accepted(cls_or_fn, kwargs: dict) -> dict:
    params = inspect.signature(cls_or_fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` or the first CUDA GPU, else the CPU (with a warning: generation there is very slow)."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but CUDA is not available: install a CUDA build of torch or pass --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    logger.warning("CUDA is not available: running on the CPU in float32 (minutes per step at real sizes)")
    return torch.device("cpu")


def _component_kwargs(cfg: dict[str, Any]) -> dict[str, dict]:
    """Constructor overrides of umT5, the VAE and CLIP from the yaml (the tiny folders' sizes)."""
    from wan.models.clip import CLIPVisionEncoder
    from wan.models.t5 import WanT5Encoder
    from wan.models.vae import WanVAE

    return {
        "t5": _accepted(WanT5Encoder, dict(cfg.get("text_encoder_kwargs", {}))),
        "vae": _accepted(WanVAE, dict(cfg.get("vae_kwargs", {}))),
        "clip": _accepted(CLIPVisionEncoder, dict(cfg.get("image_encoder_kwargs", {}))),
    }


def _weight_problems(paths: CheckpointPaths, cfg: dict[str, Any], roles: tuple[str, ...] = ("t5", "vae", "clip", "dit")) -> dict[str, str]:
    """Each loader of ``roles`` run under ``check_only()`` on the meta device: {role: its CheckpointError}."""
    from wan.models.clip import load_clip_image_encoder
    from wan.models.loading import CheckpointError, WeightsMatch, check_only
    from wan.models.t5 import load_t5_encoder
    from wan.models.transformer import load_transformer
    from wan.models.vae import load_vae

    kw = _component_kwargs(cfg)
    loaders = {
        "t5": lambda: load_t5_encoder(paths.t5, preset="umt5-xxl", device="meta", **kw["t5"]),
        "vae": lambda: load_vae(paths.vae, device="meta", **kw["vae"]),
        "clip": lambda: load_clip_image_encoder(paths.clip, device="meta", **kw["clip"]),
        "dit": lambda: load_transformer(paths.base_dir, paths.transformer_path, device="meta"),
    }
    found = {}
    for role in roles:
        try:
            with check_only(), torch.device("meta"):
                loaders[role]()
        except WeightsMatch:
            continue
        except (CheckpointError, FileNotFoundError) as err:
            found[role] = str(err)
    return found


def _matching_yaml(paths: CheckpointPaths, config_path: str | os.PathLike | None, roles: list[str]) -> Path | None:
    """A yaml beside the base folder (or in it) whose encoder sizes fit the files of ``roles``."""
    current = Path(config_path or DEFAULT_CONFIG).resolve()
    for candidate in sorted({*paths.base_dir.parent.glob("*.yaml"), *paths.base_dir.glob("*.yaml")}):
        if candidate.resolve() == current:
            continue
        try:
            cfg = read_yaml_config(candidate)
        except ValueError:
            continue
        if not _weight_problems(paths, cfg, tuple(roles)):
            return candidate
    return None


def check_weight_contents(paths: CheckpointPaths, cfg: dict[str, Any], config_path: str | os.PathLike | None = None) -> None:
    """Every weight file's keys and shapes against the model it feeds, before any weight is read.

    Runs the real loaders (so the same key mapping) on meta tensors: headers and pickled metadata
    only, so the cost does not grow with the weights' size. Raises one CheckpointError listing every file
    that does not match. When only the encoders (umT5/VAE/CLIP) mismatch, their sizes come from
    the yaml: the message names a yaml beside the folder that fits (the tiny folders ship one).
    """
    from wan.models.loading import CheckpointError

    found = _weight_problems(paths, cfg)
    if not found:
        return
    head = f"{len(found)} weight file(s) do not match their model"
    encoders = [role for role in found if role != "dit"]
    fit = _matching_yaml(paths, config_path, encoders) if encoders and "dit" not in found else None
    if fit or (encoders and "dit" not in found and all("wrong shape" in found[role] for role in encoders)):
        # every mismatch is an encoder size, and those sizes come from the yaml
        fix = f"pass --config_path={fit} (its sizes match these files)" if fit else "pass the yaml made for these files with --config_path"
        head = (
            f"the {'/'.join(encoders)} files do not have the sizes {config_path or DEFAULT_CONFIG} declares "
            f"(text_encoder_kwargs, vae_kwargs, image_encoder_kwargs): {fix}"
        )
    raise CheckpointError(f"{head}:\n  " + "\n  ".join(found.values()))


def checked_checkpoints(
    pretrained_model_name_or_path: str | os.PathLike,
    transformer_path: str | os.PathLike | None = None,
    wav2vec_path: str | os.PathLike | None = None,
    config_path: str | os.PathLike | None = None,
    contents: bool = False,
) -> tuple[CheckpointPaths, dict[str, Any]]:
    """The checkpoint layout for these flags, validated (every file present and readable), and the yaml.

    Raises CheckpointError listing every problem with its download command. The size floors that
    catch truncated downloads hold for the released sizes only; a yaml that declares smaller models
    (the tiny test folders) drops them, headers are checked either way. With ``contents`` every
    file's keys and shapes are checked too (``check_weight_contents``).
    """
    from wan.models.t5 import T5_PRESETS

    cfg = read_yaml_config(config_path)
    text_kw, vae_kw, clip_kw = (dict(cfg.get(k, {})) for k in ("text_encoder_kwargs", "vae_kwargs", "image_encoder_kwargs"))
    subpaths = {
        "vae_subpath": vae_kw.get("vae_subpath"),
        "t5_subpath": text_kw.get("text_encoder_subpath"),
        "clip_subpath": clip_kw.get("image_encoder_subpath"),
        "tokenizer_subpath": text_kw.get("tokenizer_subpath"),
    }
    paths = CheckpointPaths.from_args(pretrained_model_name_or_path, transformer_path, wav2vec_path, **{k: v for k, v in subpaths.items() if v})
    kw = _component_kwargs(cfg)
    small = bool(kw["clip"] or kw["vae"]) or any(T5_PRESETS["umt5-xxl"].get(k) != v for k, v in kw["t5"].items())
    paths.validate(min_bytes={"vae": 0, "t5": 0, "clip": 0, "transformer": 0} if small else None)
    if contents:
        check_weight_contents(paths, cfg, config_path)
    return paths, cfg


def auto_compile(device: torch.device, memory_mode: str, multi_process: bool) -> bool:
    """Whether ``--compile`` is on by default: one CUDA GPU holding the whole DiT. (Sequential and
    float8-storage offload move or cast weights inside the blocks; sequence parallelism puts
    collectives there: compiled, both break graphs and gain little.)"""
    return torch.device(device).type == "cuda" and memory_mode in ("model_full_load", "model_cpu_offload") and not multi_process


def load_pipeline(
    pretrained_model_name_or_path: str | os.PathLike,
    transformer_path: str | os.PathLike | None = None,
    wav2vec_path: str | os.PathLike | None = None,
    config_path: str | os.PathLike | None = None,
    memory_mode: str = "model_full_load",
    attention_backend: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    ulysses_degree: int = 1,
    ring_degree: int = 1,
    fsdp_dit: bool = False,
    teacache_threshold: float | None = None,
    teacache_skip_start_steps: int = 5,
    teacache_offload: bool = False,
    compile_transformer: bool | None = False,
    sdpa_kernel: str | None = None,
    vae_dtype: torch.dtype = torch.float32,
    fast: bool = False,
    compile_cache_dir: str | os.PathLike | None = None,
    ranks_per_job: int | None = None,
    loras: Sequence[str | LoraSpec] = (),
    lora_merge: bool = True,
):
    """Build the StableAvatarPipeline from the original checkpoint layout.

    pretrained_model_name_or_path: the Wan2.1-Fun-V1.1-1.3B-InP (or 14B) folder.
    transformer_path: StableAvatar's ``transformer3d-*.pt`` (None: the base DiT alone, with a warning).
    wav2vec_path: the wav2vec2-base-960h folder (default: beside the base folder).
    memory_mode: one of ``MEMORY_MODES`` (the original's ``--GPU_memory_mode``).
    dtype: compute dtype of the DiT and umT5 (default bf16 on CUDA, float32 on the CPU).
    compile_transformer: regional ``torch.compile`` of the DiT blocks (``--compile``); None = auto:
        on for a single CUDA GPU with the DiT resident (``model_full_load``/``model_cpu_offload``),
        off elsewhere. Compiled code is cached in ``compile_cache_dir`` (see wan.runtime.compile_cache).
    fast: ``--fast``: FP8 matmuls and attention in the DiT (wan.runtime.fast; not the original's numbers).
    sdpa_kernel: preferred PyTorch attention kernel (``--sdpa_kernel``; see wan.models.attention).
    vae_dtype: the VAE's dtype; float32 as the original (``--vae_dtype bfloat16`` halves the decode's
        memory and time, with bf16 rounding in the decoded frames).
    ranks_per_job: under torchrun, the processes that make one video together (None: all of them;
        ``--batch_file`` gives each group of ``ranks_per_job`` its own videos).
    loras: LoRA files for the DiT, ``"PATH[:SCALE]"`` or ``LoraSpec`` (``--lora_path``; wan.models.lora),
        merged into the weights, or kept as peft hooks with ``lora_merge=False`` (``--lora_no_merge``).
    """
    from wan.audio import Wav2VecFeatureExtractor
    from wan.models.attention import set_attention_backend
    from wan.models.clip import load_clip_image_encoder
    from wan.models.t5 import load_t5_encoder, load_tokenizer
    from wan.models.transformer import load_transformer
    from wan.models.vae import load_vae
    from wan.pipelines.pipeline_stableavatar import StableAvatarPipeline
    from wan.pipelines.scheduling import build_scheduler

    if memory_mode not in MEMORY_MODES:
        raise ValueError(f"--GPU_memory_mode {memory_mode!r}: choose one of {MEMORY_MODES}")
    parallel = None
    if attention_backend:
        set_attention_backend(attention_backend)
    from wan.models.attention import set_sdpa_kernel

    set_sdpa_kernel(sdpa_kernel)
    if ulysses_degree * ring_degree > 1 or fsdp_dit or _launched_world_size() > 1:
        # Several processes (torchrun): sequence-parallel groups and/or windows spread over ranks.
        from wan.distributed import setup_parallel

        if fsdp_dit and memory_mode != "model_full_load":
            raise ValueError(f"--fsdp_dit keeps the DiT's shards on the GPUs; it needs --GPU_memory_mode model_full_load, not {memory_mode}")
        parallel = setup_parallel(ulysses_degree, ring_degree, device=device, ranks_per_job=ranks_per_job)
        device = parallel.device
    else:
        device = resolve_device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)

    paths, cfg = checked_checkpoints(pretrained_model_name_or_path, transformer_path, wav2vec_path, config_path)
    kw = _component_kwargs(cfg)

    # Components are loaded on the CPU; the memory mode then places them. One line per file: the
    # released umT5 alone is 11 GB.
    tokenizer = load_tokenizer(paths.tokenizer_dir)
    logger.info(f"loading umT5 from {paths.t5}")
    text_encoder = load_t5_encoder(paths.t5, dtype=dtype, preset="umt5-xxl", **kw["t5"])
    logger.info(f"loading the VAE from {paths.vae}")
    vae = load_vae(paths.vae, dtype=vae_dtype, **kw["vae"])
    logger.info(f"loading CLIP from {paths.clip}")
    clip = load_clip_image_encoder(paths.clip, dtype=torch.float32, **kw["clip"])
    logger.info(f"loading the DiT from {paths.base_dir}" + (f" + {paths.transformer_path}" if paths.transformer_path else ""))
    transformer = load_transformer(paths.base_dir, paths.transformer_path, dtype=dtype)
    if loras:  # before the memory mode, --fast's quantisation and compilation: merged into bf16 weights
        from wan.models.lora import load_loras

        load_loras(transformer, loras, merge=lora_merge)
        logger.info(f"LoRA: {len(loras)} file(s), {'merged into the DiT' if lora_merge else 'as peft hooks'}")
    logger.info(f"loading wav2vec2 from {paths.wav2vec_dir}")
    wav2vec = Wav2VecFeatureExtractor(paths.wav2vec_dir)
    scheduler = build_scheduler(cfg.get("scheduler_kwargs"))

    pipe = StableAvatarPipeline(tokenizer, text_encoder, vae, transformer, clip, scheduler, wav2vec)
    from wan.runtime.memory import apply_memory_mode

    apply_memory_mode(pipe, memory_mode, device)
    if parallel is not None:
        parallel.attach(pipe, fsdp_dit=fsdp_dit)
    shared = parallel is not None and parallel.job_size > 1  # several processes per video (a --batch_file group of one is one GPU)
    if fast:
        from wan.runtime.fast import enable_fast_mode

        if memory_mode != "model_full_load" or shared:
            raise ValueError("--fast quantises the DiT in place on the GPU: it needs --GPU_memory_mode model_full_load on one GPU")
        logger.info(f"--fast: {enable_fast_mode(transformer, device).describe()} (not the original's numbers)")
    if compile_transformer is None:
        compile_transformer = auto_compile(device, memory_mode, shared)
    if compile_transformer:
        from wan.runtime.compile_cache import configure_compile_cache

        cache = configure_compile_cache(compile_cache_dir)
        transformer.compile_blocks()
        logger.info(f"DiT blocks compiled on first use (regional torch.compile); compile cache: {cache}")
    if teacache_threshold is not None:
        from wan.models.teacache import enable_teacache

        enable_teacache(pipe, teacache_threshold, num_skip_start_steps=teacache_skip_start_steps, offload=teacache_offload)
        logger.info(f"TeaCache on: threshold {teacache_threshold}, first {teacache_skip_start_steps} steps always computed, per window")
    return pipe
