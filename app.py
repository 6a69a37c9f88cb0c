"""StableAvatar web app: reference image + audio -> talking-avatar video, in the browser.

    python app.py                                   # http://127.0.0.1:7891
    STABLEAVATAR_CHECKPOINTS=/path/to/ckpts python app.py --server_port 7900

UI wiring only: the actions live in ``wan.app.service``, the texts in ``wan.app.i18n``, the flags
in ``wan.app.config``. Nothing heavy happens at import; the pipeline loads on the first
generation and is reused (see docs/app.md).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from wan.app.config import checkpoint_problems, parse_args, resolve_checkpoints
from wan.app.helpers import MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, AppError, adjust_size_to_image, new_session_dir, snap_size
from wan.app.i18n import LANGUAGES, info, text
from wan.app.service import AvatarService, GenerateRequest, Limits, PipelineCache

logger = logging.getLogger("wan.app")
BUTTONS = ("swap", "adjust", "generate", "extract", "use_extracted", "separate", "use_separated")


def build_demo(service: AvatarService, language: str = "English"):
    """The gr.Blocks page; every button calls ``service``. AppError messages go to the status box."""
    import gradio as gr

    from wan.constants import NEGATIVE_PROMPT
    from wan.pipelines.loading import MEMORY_MODES
    from wan.pipelines.solvers import SOLVERS

    def failed(err: Exception) -> str:
        if isinstance(err, AppError):
            return f"❌ {err}"
        logger.exception("request failed")
        return f"❌ Unexpected error: {type(err).__name__}: {err} (details in the server log)"

    def generate(memory_mode, teacache_threshold, teacache_skip, clip_length, image, audio, prompt, negative_prompt,
                 width, height, steps, text_scale, audio_scale, overlap, seed, solver, shift, lora_file, lora_scale,
                 progress=gr.Progress()):  # noqa: B008 (a gr.Progress() default is Gradio's documented progress-tracking pattern)  # fmt: skip
        request = GenerateRequest(
            image=image, audio=audio, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
            steps=steps, text_guide_scale=text_scale, audio_guide_scale=audio_scale, clip_length=clip_length,
            overlap=overlap, seed=seed, memory_mode=memory_mode, teacache_threshold=teacache_threshold,
            teacache_skip_start_steps=teacache_skip, sample_solver=solver, sample_shift=shift, lora_path=lora_file or None,
            lora_scale=lora_scale,
        )  # fmt: skip
        try:
            result = service.generate(request, lambda fraction, desc: progress(fraction, desc=desc))
        except Exception as err:  # shown in the page; the traceback (if unexpected) goes to the log
            return None, None, "", failed(err)
        return str(result.video), str(result.video), str(result.seed), f"✅ {result.message}"

    def preprocess(action):
        def run(path):
            try:
                out, message = action(path)
            except Exception as err:
                return None, failed(err)
            return str(out), f"✅ {message}"

        return run

    def adjust(image):
        if not image:
            return gr.skip(), gr.skip(), "❌ Upload a reference image first. / 请先上传参考图片。"
        from PIL import Image

        try:
            with Image.open(image) as img:
                w, h = adjust_size_to_image(*img.size)
        except Exception as err:
            return gr.skip(), gr.skip(), failed(err if isinstance(err, AppError) else AppError(f"cannot read the image: {err}"))
        return w, h, f"✅ Size adjusted to the image: {w}x{h} / 已根据图片调整宽高"

    def swap(width, height):
        return snap_size(height), snap_size(width), "✅ Width and height swapped / 宽高交换完毕"

    def lab(key: str) -> dict:  # constructor texts of component ``key`` in the start language
        if key in BUTTONS:
            return {"value": text(key, language)}
        return {"label": text(key, language), **({"info": info(key, language)} if info(key, language) else {})}

    c: dict[str, object] = {}  # key (as in wan.app.i18n) -> component, for the language toggle
    with gr.Blocks(title="StableAvatar", analytics_enabled=False) as demo:
        gr.Markdown("## StableAvatar\nReference image + audio → talking-avatar video (Wan2.1 DiT).")
        c["language"] = gr.Radio(list(LANGUAGES), value=language, label=text("language", language), elem_id="language")
        with gr.Accordion(text("settings", language), open=False) as c["settings"]:
            with gr.Row():
                c["memory_mode"] = gr.Dropdown(list(MEMORY_MODES), value="model_full_load", elem_id="memory_mode", **lab("memory_mode"))
                c["teacache_threshold"] = gr.Slider(0, 1, value=0, step=0.01, elem_id="teacache_threshold", **lab("teacache_threshold"))
                c["teacache_skip"] = gr.Slider(0, 100, value=5, step=1, elem_id="teacache_skip", **lab("teacache_skip"))
                c["clip_length"] = gr.Slider(17, 321, value=81, step=4, elem_id="clip_length", **lab("clip_length"))
            with gr.Row():
                c["sample_solver"] = gr.Dropdown(list(SOLVERS), value="euler", elem_id="sample_solver", **lab("sample_solver"))
                c["sample_shift"] = gr.Number(value=5.0, minimum=0.1, elem_id="sample_shift", **lab("sample_shift"))
                c["lora_file"] = gr.File(type="filepath", file_types=[".safetensors", ".pt", ".pth", ".bin"], elem_id="lora_file", **lab("lora_file"))
                c["lora_scale"] = gr.Slider(0, 2, value=1.0, step=0.05, elem_id="lora_scale", **lab("lora_scale"))
        with gr.Tabs():
            with gr.Tab(text("tab_generate", language)) as c["tab_generate"]:
                with gr.Row():
                    with gr.Column():
                        with gr.Row():
                            c["image"] = gr.Image(type="filepath", sources=["upload"], height=320, elem_id="image", **lab("image"))
                            c["audio"] = gr.Audio(type="filepath", sources=["upload"], elem_id="audio", **lab("audio"))
                        c["prompt"] = gr.Textbox(lines=2, elem_id="prompt", **lab("prompt"))
                        c["negative_prompt"] = gr.Textbox(value=NEGATIVE_PROMPT, lines=2, elem_id="negative_prompt", **lab("negative_prompt"))
                        with gr.Row():
                            c["width"] = gr.Slider(MIN_SIZE, MAX_SIZE, value=512, step=SIZE_MULTIPLE, elem_id="width", **lab("width"))
                            c["height"] = gr.Slider(MIN_SIZE, MAX_SIZE, value=512, step=SIZE_MULTIPLE, elem_id="height", **lab("height"))
                        with gr.Row():
                            c["swap"] = gr.Button(elem_id="swap", **lab("swap"))
                            c["adjust"] = gr.Button(elem_id="adjust", **lab("adjust"))
                        with gr.Row():
                            c["steps"] = gr.Slider(1, 100, value=10, step=1, elem_id="steps", **lab("steps"))
                            c["overlap"] = gr.Slider(0, 20, value=5, step=1, elem_id="overlap", **lab("overlap"))
                        with gr.Row():
                            c["text_guide_scale"] = gr.Slider(1, 10, value=3.0, step=0.1, elem_id="text_guide_scale", **lab("text_guide_scale"))
                            c["audio_guide_scale"] = gr.Slider(1, 10, value=5.0, step=0.1, elem_id="audio_guide_scale", **lab("audio_guide_scale"))
                        c["seed"] = gr.Number(value=-1, precision=0, elem_id="seed", **lab("seed"))
                        c["generate"] = gr.Button(variant="primary", elem_id="generate", **lab("generate"))
                    with gr.Column():
                        c["video_output"] = gr.Video(interactive=False, buttons=["download"], elem_id="video_output", **lab("video_output"))
                        c["download"] = gr.File(interactive=False, elem_id="download", **lab("download"))
                        c["seed_output"] = gr.Textbox(interactive=False, elem_id="seed_output", **lab("seed_output"))
                        c["status"] = gr.Textbox(interactive=False, lines=3, elem_id="status", **lab("status"))
            with gr.Tab(text("tab_extract", language)) as c["tab_extract"]:
                c["video_input"] = gr.Video(sources=["upload"], elem_id="video_input", **lab("video_input"))
                c["extract"] = gr.Button(variant="primary", elem_id="extract", **lab("extract"))
                c["extracted_audio"] = gr.Audio(type="filepath", interactive=False, elem_id="extracted_audio", **lab("extracted_audio"))
                c["use_extracted"] = gr.Button(elem_id="use_extracted", **lab("use_extracted"))
                c["extract_status"] = gr.Textbox(interactive=False, elem_id="extract_status", **lab("extract_status"))
            with gr.Tab(text("tab_separate", language)) as c["tab_separate"]:
                c["separate_input"] = gr.Audio(type="filepath", sources=["upload"], elem_id="separate_input", **lab("separate_input"))
                c["separate"] = gr.Button(variant="primary", elem_id="separate", **lab("separate"))
                c["separated_audio"] = gr.Audio(type="filepath", interactive=False, elem_id="separated_audio", **lab("separated_audio"))
                c["use_separated"] = gr.Button(elem_id="use_separated", **lab("use_separated"))
                c["separate_status"] = gr.Textbox(interactive=False, elem_id="separate_status", **lab("separate_status"))

        def relabel(lang: str) -> list:
            updates = []
            for key, comp in c.items():
                if key in BUTTONS:
                    updates.append(gr.Button(value=text(key, lang)))
                elif isinstance(comp, gr.Tab | gr.Accordion):
                    updates.append(type(comp)(label=text(key, lang)))
                else:
                    updates.append(type(comp)(label=text(key, lang), info=info(key, lang)) if info(key, lang) else type(comp)(label=text(key, lang)))
            return updates

        c["language"].change(relabel, c["language"], list(c.values()), queue=False)

        inputs = [c[k] for k in ("memory_mode", "teacache_threshold", "teacache_skip", "clip_length", "image", "audio", "prompt",
                                 "negative_prompt", "width", "height", "steps", "text_guide_scale", "audio_guide_scale", "overlap", "seed",
                                 "sample_solver", "sample_shift", "lora_file", "lora_scale")]  # fmt: skip
        outputs = [c["video_output"], c["download"], c["seed_output"], c["status"]]
        for trigger in (c["generate"].click, c["prompt"].submit, c["negative_prompt"].submit):
            trigger(generate, inputs, outputs, concurrency_limit=1, concurrency_id="generate")
        c["swap"].click(swap, [c["width"], c["height"]], [c["width"], c["height"], c["status"]], queue=False)
        c["adjust"].click(adjust, c["image"], [c["width"], c["height"], c["status"]], queue=False)
        c["extract"].click(preprocess(service.extract_audio), c["video_input"], [c["extracted_audio"], c["extract_status"]], concurrency_limit=1)
        c["separate"].click(preprocess(service.separate_vocals), c["separate_input"], [c["separated_audio"], c["separate_status"]], concurrency_limit=1)
        c["use_extracted"].click(lambda p: p, c["extracted_audio"], c["audio"], queue=False)
        c["use_separated"].click(lambda p: p, c["separated_audio"], c["audio"], queue=False)
    return demo


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    own_temp = not os.environ.get("GRADIO_TEMP_DIR")  # a folder we make is removed on exit; a given one is kept
    temp_root = Path(tempfile.mkdtemp(prefix="stableavatar-app-") if own_temp else os.environ["GRADIO_TEMP_DIR"])
    os.environ["GRADIO_TEMP_DIR"] = str(temp_root)  # gradio's upload cache lives inside the app's temp folder
    if args.server_name not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("--server_name %s: the app is reachable from other machines", args.server_name)
    mcp = args.mcp_server and importlib.util.find_spec("mcp") is not None
    if args.mcp_server and not mcp:
        logger.warning("--mcp_server needs gradio[mcp] (the 'mcp' package), which is not installed: ignored")

    checkpoints = resolve_checkpoints(args)
    logger.info("checkpoints: %s", checkpoints)
    problems = checkpoint_problems(checkpoints)
    if problems:  # said once here; each generation then shows it in the page until the files are there
        logger.warning("generation will fail until the checkpoints are in place (the other tabs work):\n%s", problems)
    results = Path(args.output_dir).resolve()
    service = AvatarService(
        PipelineCache(checkpoints, device=args.device, attention_backend=args.attention_backend, compile_transformer=False if args.eager else None),
        output_root=new_session_dir(results),  # the only results folder the page serves
        temp_root=temp_root / "requests",
        limits=Limits(max_upload_mb=args.max_upload_mb, max_duration_s=args.max_duration_s),
        vocal_model=args.vocal_separator_model,
        keep_results=args.keep_results,
        results_root=results,
    )
    demo = build_demo(service, args.language)
    demo.queue(default_concurrency_limit=1, max_size=32)
    # SIGTERM (systemd, docker stop, kill) ends the app like Ctrl+C, so the finally below runs.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        demo.launch(
            server_name=args.server_name,
            server_port=args.server_port,
            share=args.share,
            mcp_server=mcp or None,
            inbrowser=args.inbrowser,
            max_file_size=f"{args.max_upload_mb:g}mb",
            allowed_paths=[str(service.output_root)],
            footer_links=["gradio"],
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        if own_temp:
            shutil.rmtree(temp_root, ignore_errors=True)
        if service.output_root.is_dir() and not any(service.output_root.iterdir()):
            service.output_root.rmdir()  # a session without results leaves no folder
    return 0


if __name__ == "__main__":
    sys.exit(main())
