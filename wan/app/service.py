"""What the app's buttons do, without gradio: generation (pipeline loaded once, reused), audio
extraction and vocal separation. Errors the user can act on are raised as ``AppError``."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from wan.app.config import CheckpointConfig
from wan.app.helpers import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    AppError,
    check_duration,
    clip_length_ok,
    media_duration,
    new_request_dir,
    prune_results,
    resolve_seed,
    snap_size,
    stage_upload,
)

logger = logging.getLogger("wan.app")
OUTPUT_NAME = "video_with_audio.mp4"
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Limits:
    max_upload_mb: float = 100.0
    max_duration_s: float = 300.0


@dataclass(frozen=True)
class GenerateRequest:
    image: str | None
    audio: str | None
    prompt: str = ""
    negative_prompt: str | None = None
    width: int = 512
    height: int = 512
    steps: int = 10  # the original app's default (its label recommends 50)
    text_guide_scale: float = 3.0
    audio_guide_scale: float = 5.0
    clip_length: int = 81
    overlap: int = 5
    seed: float | int | str | None = -1
    memory_mode: str = "model_full_load"
    teacache_threshold: float = 0.0
    teacache_skip_start_steps: int = 5
    sample_solver: str = "euler"  # or unipc / dpm++ (wan.pipelines.solvers)
    sample_shift: float | None = None  # None: the yaml's 5.0
    lora_path: str | None = None  # a LoRA file for the DiT (wan.models.lora), merged at load
    lora_scale: float = 1.0


@dataclass(frozen=True)
class GenerateResult:
    video: Path
    seed: int
    message: str


def _no_progress(fraction: float, desc: str) -> None:
    pass


class PipelineCache:
    """One StableAvatarPipeline, loaded on first use and reused while the memory mode and the LoRA
    (file contents by path, size and mtime, and scale) stay the same; a change drops it and loads
    again, with the LoRA merged into the DiT, so each LoRA file is read once per load. Load errors
    become AppError with their text."""

    def __init__(
        self, checkpoints: CheckpointConfig, device: str | None = None, attention_backend: str | None = None, compile_transformer: bool | None = None
    ):
        self.checkpoints = checkpoints
        self.device = device
        self.attention_backend = attention_backend
        self.compile_transformer = compile_transformer  # None: inference.py's default (compiled on one CUDA GPU)
        self._lock = threading.Lock()
        self._pipe = None
        self._key: tuple | None = None
        self.loads = 0  # how many times a pipeline was built (the tests read it)

    def get(self, memory_mode: str, lora_path: str | os.PathLike | None = None, lora_scale: float = 1.0):
        from wan.pipelines.loading import MEMORY_MODES

        if memory_mode not in MEMORY_MODES:
            raise AppError(f"memory mode {memory_mode!r} is not one of {', '.join(MEMORY_MODES)}")
        loras, lora_key = (), None
        if lora_path:
            lora = Path(lora_path)
            if not lora.is_file():
                raise AppError(f"LoRA file not found: {lora}")
            from wan.models.lora import LoraSpec

            stat = lora.stat()
            loras, lora_key = [LoraSpec(lora, float(lora_scale))], (str(lora.resolve()), stat.st_size, stat.st_mtime_ns, float(lora_scale))
        key = (memory_mode, lora_key)
        with self._lock:
            if self._pipe is not None and self._key == key:
                return self._pipe
            self._release()
            from wan.models.loading import CheckpointError
            from wan.pipelines import load_pipeline

            c = self.checkpoints
            try:
                pipe = load_pipeline(
                    c.pretrained_model_name_or_path,
                    transformer_path=c.transformer_path,
                    wav2vec_path=c.pretrained_wav2vec_path,
                    config_path=c.config_path,
                    memory_mode=memory_mode,
                    attention_backend=self.attention_backend,
                    device=self.device,
                    compile_transformer=self.compile_transformer,
                    loras=loras,
                )
            except (FileNotFoundError, CheckpointError, ValueError, RuntimeError) as err:
                logger.error("loading the pipeline failed: %s", err)
                raise AppError(f"The models could not be loaded:\n{err}\n(see checkpoints/README.md; model paths: app.py --help)") from None
            self._pipe, self._key = pipe, key
            self.loads += 1
            return pipe

    def _release(self) -> None:
        if self._pipe is None:
            return
        self._pipe, self._key = None, None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class AvatarService:
    """The app's actions. ``output_root`` receives one folder per request; uploads are copied into
    ``temp_root`` under fixed names before anything reads them. With ``keep_results`` N > 0 each
    new request removes all but the N newest request folders under ``results_root`` (app.py: the
    --output_dir, whose session folders hold them)."""

    def __init__(
        self,
        pipelines: PipelineCache,
        output_root: str | os.PathLike,
        temp_root: str | os.PathLike,
        limits: Limits,
        vocal_model: str | os.PathLike,
        keep_results: int = 0,
        results_root: str | os.PathLike | None = None,
    ):
        self.pipelines = pipelines
        self.output_root = Path(output_root)
        self.temp_root = Path(temp_root)
        self.limits = limits
        self.vocal_model = Path(vocal_model)
        self.keep_results = keep_results  # request folders kept under results_root (0: all)
        self.results_root = Path(results_root) if results_root is not None else self.output_root

    # -- shared ---------------------------------------------------------------------------------
    def _folders(self) -> tuple[Path, Path]:
        out = new_request_dir(self.output_root)
        prune_results(self.results_root, self.keep_results, spare=(out, self.output_root))
        tmp = self.temp_root / out.name
        tmp.mkdir(parents=True, exist_ok=True)
        return out, tmp

    def _stage_audio(self, src: str, tmp: Path, stem: str = "audio", extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> Path:
        staged = stage_upload(src, tmp, stem, extensions, self.limits.max_upload_mb)
        check_duration(media_duration(staged), self.limits.max_duration_s, "video" if extensions is VIDEO_EXTENSIONS else "audio")
        return staged

    # -- generation -----------------------------------------------------------------------------
    def generate(self, req: GenerateRequest, progress: Progress = _no_progress) -> GenerateResult:
        """Check the request, run the pipeline, write ``<output_root>/<request>/video_with_audio.mp4``.
        The staged uploads are removed afterwards, whatever happens."""

        if not req.image:
            raise AppError("Please upload a reference image. / 请上传参考图片。")
        if not req.audio:
            raise AppError("Please upload the driving audio (or extract it from a video in the Audio Extraction tab). / 请上传驱动音频。")
        width, height, steps, clip, overlap = snap_size(req.width), snap_size(req.height), int(req.steps), int(req.clip_length), int(req.overlap)
        if steps < 1:
            raise AppError(f"sampling steps must be at least 1, got {steps}")
        if not clip_length_ok(clip):
            raise AppError(f"clip frames must be 4k+1 (e.g. 81, 77, 85), got {clip}")
        from wan.pipelines.sliding_window import frames_per_window, validate_overlap

        try:
            validate_overlap(overlap, frames_per_window(clip))
        except ValueError as err:
            raise AppError(str(err)) from None
        from wan.pipelines.solvers import SOLVERS

        if req.sample_solver not in SOLVERS:
            raise AppError(f"solver {req.sample_solver!r} is not one of {', '.join(SOLVERS)}")
        if req.sample_shift is not None and float(req.sample_shift) <= 0:
            raise AppError(f"the sample shift must be > 0, got {req.sample_shift}")
        seed = resolve_seed(req.seed)

        out, tmp = self._folders()
        try:
            return self._generate(req, out, tmp, width, height, steps, clip, overlap, seed, progress)
        finally:
            _cleanup(out, tmp)

    def _generate(self, req: GenerateRequest, out: Path, tmp: Path, width: int, height: int, steps: int, clip: int, overlap: int, seed: int, progress: Progress) -> GenerateResult:
        from wan.constants import DEFAULT_FPS, NEGATIVE_PROMPT
        from wan.pipelines.sliding_window import schedule_for_audio

        image = stage_upload(req.image, tmp, "reference", IMAGE_EXTENSIONS, self.limits.max_upload_mb)
        _check_image(image)
        audio = self._stage_audio(req.audio, tmp)
        from wan.audio import load_audio

        try:
            samples = load_audio(audio)
        except (FileNotFoundError, ValueError) as err:
            raise AppError(str(err).replace(str(audio), "the uploaded audio")) from None
        windows = len(schedule_for_audio(len(samples), clip, overlap))

        progress(0.0, "loading the models (first run only)")
        pipe = self.pipelines.get(req.memory_mode, req.lora_path, req.lora_scale)
        self._set_teacache(pipe, req.teacache_threshold, req.teacache_skip_start_steps)

        import torch

        from wan.runtime.memory import oom_advice
        from wan.utils.video_io import decoded_to_uint8, write_video

        progress(0.05, f"denoising: {steps} steps x {windows} window{'s' * (windows > 1)}")
        generator = torch.Generator(device=getattr(pipe, "device", "cpu")).manual_seed(seed)
        try:
            with _window_progress(pipe, windows, progress):
                result = pipe(
                    image=str(image),
                    audio=samples,
                    prompt=req.prompt or "",
                    negative_prompt=NEGATIVE_PROMPT if req.negative_prompt is None else req.negative_prompt,
                    height=height,
                    width=width,
                    num_inference_steps=steps,
                    text_guide_scale=float(req.text_guide_scale),
                    audio_guide_scale=float(req.audio_guide_scale),
                    clip_length=clip,
                    overlap_window_length=overlap,
                    overlapping_weight_scheme="uniform",
                    fps=DEFAULT_FPS,
                    generator=generator,
                    output_type="stream",
                    sample_solver=req.sample_solver,
                    sample_shift=req.sample_shift,
                )
            progress(0.92, "decoding and writing the video")
            written = write_video(
                out / OUTPUT_NAME, (decoded_to_uint8(c) for c in result.videos), fps=DEFAULT_FPS, audio_path=audio, progress=False
            )
        except torch.cuda.OutOfMemoryError:
            raise AppError(f"Out of GPU memory: {oom_advice(req.memory_mode)} (choose it under Model Settings)") from None
        progress(1.0, "done")
        message = f"Generated {_shown(written.path)} ({written.num_frames} frames, {written.duration:.2f} s, {width}x{height}, seed {seed}) / 已生成"
        return GenerateResult(video=written.path, seed=seed, message=message)

    @staticmethod
    def _set_teacache(pipe, threshold: float, skip_start_steps: int) -> None:
        try:
            from wan.models.teacache import disable_teacache, enable_teacache
        except ImportError:
            if threshold > 0:
                raise AppError("TeaCache is not available in this checkout; set its threshold to 0") from None
            return
        if threshold > 0:
            enable_teacache(pipe, float(threshold), num_skip_start_steps=int(skip_start_steps))
        else:
            disable_teacache(pipe)

    # -- preprocessing --------------------------------------------------------------------------
    def extract_audio(self, video: str | None) -> tuple[Path, str]:
        if not video:
            raise AppError("Please upload a video. / 请上传视频。")
        try:
            from wan.preprocess.audio_extract import extract_audio
        except ImportError:
            raise AppError("Audio extraction is not available in this checkout (wan.preprocess.audio_extract is missing).") from None
        out, tmp = self._folders()
        target = out / "audio.wav"
        try:
            staged = self._stage_audio(video, tmp, "video", VIDEO_EXTENSIONS)
            extract_audio(staged, target)
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            raise AppError(f"Audio extraction failed: {str(err).replace(str(tmp), '<upload>')}") from None
        finally:
            _cleanup(out, tmp)
        return target, f"Generated {_shown(target)} / 已生成"

    def separate_vocals(self, audio: str | None) -> tuple[Path, str]:
        if not audio:
            raise AppError("Please upload an audio file. / 请上传音频。")
        if not self.vocal_model.is_file():
            raise AppError(
                f"The vocal separation model {self.vocal_model} is missing. Download Kim_Vocal_2.onnx into checkpoints/ "
                "(see checkpoints/README.md) or pass --vocal_separator_model PATH."
            )
        try:
            from wan.preprocess.vocal_separation import separate_vocals
        except ImportError as err:
            raise AppError(f"Vocal separation is not available here ({err}); install the optional audio-separator extra.") from None
        out, tmp = self._folders()
        target = out / "vocals.wav"
        try:
            staged = self._stage_audio(audio, tmp)
            separate_vocals(self.vocal_model, staged, target)
        except (FileNotFoundError, ValueError, RuntimeError, ImportError) as err:
            raise AppError(f"Vocal separation failed: {str(err).replace(str(tmp), '<upload>')}") from None
        finally:
            _cleanup(out, tmp)
        return target, f"Generated {_shown(target)} / 已生成"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (outputs/...), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _cleanup(out: Path, tmp: Path) -> None:
    """Remove a request's staged uploads, and its output folder if nothing was written to it."""
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        out.rmdir()  # only succeeds when empty (the request failed)
    except OSError:
        pass


def _check_image(path: Path) -> None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as err:  # PIL raises many types for broken files
        raise AppError(f"cannot read the reference image: {err}") from None


class _PageBar:
    """Stands in for the pipeline's tqdm bar while the app runs it. The pipeline opens one bar of
    ``steps x windows`` ticks and ticks it after every window's DiT call; each tick moves the page's
    progress bar (5% .. 90%) and names the step and window."""

    def __init__(self, total: int, windows: int, report: Progress):
        self.total, self.windows, self.report, self.n = max(1, int(total)), max(1, windows), report, 0

    def __enter__(self) -> _PageBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        step, window = divmod(self.n - 1, self.windows)
        steps = -(-self.total // self.windows)
        self.report(0.05 + 0.85 * min(1.0, self.n / self.total), f"denoising: step {step + 1}/{steps}, window {window + 1}/{self.windows}")

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def _window_progress(pipe, windows: int, report: Progress) -> Iterator[None]:
    """Route the pipeline's ``progress_bar(total=...)`` to ``report`` for one call (an instance
    attribute that shadows the method, removed afterwards; the cached pipeline is used by one
    request at a time)."""

    def progress_bar(iterable=None, total=None):
        if iterable is not None or total is None:
            return type(pipe).progress_bar(pipe, iterable=iterable, total=total)
        return _PageBar(total, windows, report)

    pipe.progress_bar = progress_bar
    try:
        yield
    finally:
        del pipe.progress_bar
