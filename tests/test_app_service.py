"""The app's actions without a browser: messages for bad input, the pipeline loaded once and reused,
per-request output folders, the preprocessing tabs, and the page's queue settings."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from tests.conftest import EXAMPLES
from wan.app.config import CheckpointConfig, parse_args, resolve_checkpoints
from wan.app.helpers import AppError
from wan.app.service import AvatarService, GenerateRequest, Limits, PipelineCache

IMAGE = str(EXAMPLES / "case-2" / "reference.png")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> CheckpointConfig:
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    root = tmp_path_factory.mktemp("ckpt")
    write_tiny_checkpoints(root)
    return resolve_checkpoints(parse_args([]), environ={"STABLEAVATAR_CHECKPOINTS": str(root)})


@pytest.fixture(scope="module")
def speech_2s(tmp_path_factory) -> str:
    import soundfile as sf

    from wan.audio import load_audio

    path = tmp_path_factory.mktemp("audio") / "speech 2s (copy).wav"
    sf.write(path, load_audio(EXAMPLES / "case-2" / "audio.wav")[:32000], 16000)
    return str(path)


def make_service(checkpoints: CheckpointConfig, tmp_path: Path, **limits) -> AvatarService:
    return AvatarService(
        PipelineCache(checkpoints, device="cpu"),
        output_root=tmp_path / "outputs",
        temp_root=tmp_path / "tmp",
        limits=Limits(**limits),
        vocal_model=tmp_path / "missing" / "Kim_Vocal_2.onnx",
    )


def small(**kw) -> GenerateRequest:
    return GenerateRequest(**{"width": 64, "height": 64, "steps": 2, "clip_length": 33, "overlap": 4, "seed": 7, **kw})


def leftovers(service: AvatarService) -> list[Path]:
    return [p for root in (service.output_root, service.temp_root) if root.exists() for p in root.iterdir()]


def test_missing_inputs_are_messages_and_load_nothing(tiny, speech_2s, tmp_path):
    service = make_service(tiny, tmp_path)
    with pytest.raises(AppError, match="reference image"):
        service.generate(small(image=None, audio=speech_2s))
    with pytest.raises(AppError, match="driving audio"):
        service.generate(small(image=IMAGE, audio=None))
    with pytest.raises(AppError, match="4k\\+1"):
        service.generate(small(image=IMAGE, audio=speech_2s, clip_length=32))
    with pytest.raises(AppError, match="unsupported file type"):
        service.generate(small(image=str(EXAMPLES / "case-2" / "audio.wav"), audio=speech_2s))
    with pytest.raises(AppError, match="above the limit of 1 s"):
        make_service(tiny, tmp_path, max_duration_s=1).generate(small(image=IMAGE, audio=speech_2s))
    assert service.pipelines.loads == 0
    assert leftovers(service) == [], "failed requests leave no folders behind"


def test_missing_checkpoint_is_a_message(tiny, speech_2s, tmp_path):
    broken = CheckpointConfig(tmp_path / "nowhere" / "Wan2.1-Fun-V1.1-1.3B-InP", tiny.transformer_path, tiny.pretrained_wav2vec_path, tiny.config_path)
    service = make_service(broken, tmp_path)
    with pytest.raises(AppError) as err:
        service.generate(small(image=IMAGE, audio=speech_2s))
    text = str(err.value)
    assert "could not be loaded" in text and "nowhere" in text and "download it with" in text and "Traceback" not in text
    assert leftovers(service) == []


def test_generate_twice_loads_once_and_writes_per_request_folders(tiny, speech_2s, tmp_path):
    service = make_service(tiny, tmp_path)
    seen: list[tuple[float, str]] = []
    first = service.generate(small(image=IMAGE, audio=speech_2s), lambda f, d: seen.append((f, d)))
    second = service.generate(small(image=IMAGE, audio=speech_2s, seed=-1))
    assert service.pipelines.loads == 1, "the pipeline is built on first use and reused"
    assert first.seed == 7 and 0 <= second.seed < 2**31 and f"seed {second.seed}" in second.message
    assert first.video.parent != second.video.parent
    assert {p.parent.parent for p in (first.video, second.video)} == {service.output_root}
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # 2 s, clip 33, overlap 4: 2 windows; the page's bar moves after every window's DiT call
    ticks = [d for _, d in seen if ", window " in d]
    assert ticks == [f"denoising: step {s}/2, window {w}/2" for s in (1, 2) for w in (1, 2)]
    assert "progress_bar" not in vars(service.pipelines.get("model_full_load")), "the stand-in bar is removed after the call"
    with av.open(str(first.video)) as container:
        assert container.streams.video and container.streams.audio
        assert (container.streams.video[0].width, container.streams.video[0].height) == (64, 64)
    assert not list(service.temp_root.glob("*/*")), "staged uploads are removed"

    # The audio extraction tab on that video gives its sound track back as 16 kHz mono.
    wav, message = service.extract_audio(str(first.video))
    assert wav.is_file() and wav.parent.parent == service.output_root and "Generated" in message
    samples, rate = soundfile.read(str(wav))
    assert rate == 16000 and samples.ndim == 1 and samples.shape[0] > 0 and np.abs(samples).max() > 0


def test_vocal_separation_without_model_names_it(tiny, speech_2s, tmp_path):
    service = make_service(tiny, tmp_path)
    with pytest.raises(AppError, match="Kim_Vocal_2.onnx is missing"):
        service.separate_vocals(speech_2s)
    with pytest.raises(AppError, match="upload an audio"):
        service.separate_vocals(None)
    with pytest.raises(AppError, match="upload a video"):
        service.extract_audio(None)


def test_page_queues_generation_one_at_a_time(tiny, tmp_path):
    pytest.importorskip("gradio")
    import app

    demo = app.build_demo(make_service(tiny, tmp_path), "中文")
    generate = [fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "generate"]
    assert len(generate) == 3  # button, prompt submit, negative prompt submit
    assert {(fn.concurrency_limit, fn.concurrency_id) for fn in generate} == {(1, "generate")}
    button = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "generate")
    assert "开始生成" in button.value
    steps = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "steps")
    assert steps.value == 10, "the original app's default number of steps"


def test_vocal_separation_with_a_model(tiny, speech_2s, tmp_path):
    """The tab end to end with a stand-in MDX model (an ONNX identity: 'vocals' = the whole mix)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from wan.preprocess.vocal_separation import KIM_VOCAL_2

    shape = ["B", 4, KIM_VOCAL_2.dim_f, KIM_VOCAL_2.dim_t]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity_mdx",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "Kim_Vocal_2.onnx")
    service = AvatarService(PipelineCache(tiny), tmp_path / "outputs", tmp_path / "tmp", Limits(), tmp_path / "Kim_Vocal_2.onnx")
    wav, message = service.separate_vocals(speech_2s)
    import soundfile as sf

    info = sf.info(wav)
    assert wav.parent.parent == service.output_root and "Generated" in message
    assert info.samplerate == KIM_VOCAL_2.sample_rate and abs(info.duration - 2.0) < 0.05
    assert service.pipelines.loads == 0 and not list(service.temp_root.glob("*/*"))


class _SlowService:
    """Stands in for AvatarService in the page: each generation holds 'the GPU' for a moment and
    records how many ran at once."""

    def __init__(self) -> None:
        import threading

        self.lock, self.active, self.most, self.calls = threading.Lock(), 0, 0, 0

    def generate(self, request: GenerateRequest, progress) -> None:
        import time

        with self.lock:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)
        time.sleep(1.0)
        with self.lock:
            self.active -= 1
        raise AppError(f"ran {request.prompt}")

    def extract_audio(self, video):
        raise AppError("unused")

    separate_vocals = extract_audio


def test_second_generation_waits_for_the_first(monkeypatch):
    """Two requests sent at once through the real Gradio server run one after the other."""
    pytest.importorskip("gradio")
    gradio_client = pytest.importorskip("gradio_client")
    import socket
    import time

    import app

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    service = _SlowService()
    demo = app.build_demo(service)  # type: ignore[arg-type]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        inputs = ("model_full_load", 0, 5, 81, None, None, "{}", "", 64, 64, 2, 3.0, 5.0, 5, -1, "euler", 5.0, None, 1.0)
        start = time.monotonic()
        jobs = [client.submit(*inputs[:6], name, *inputs[7:], api_name="/generate") for name in ("first", "second")]
        statuses = sorted(job.result(timeout=60)[3] for job in jobs)
        elapsed = time.monotonic() - start
    finally:
        demo.close()
    assert statuses == ["❌ ran first", "❌ ran second"]
    assert (service.calls, service.most) == (2, 1), "generations never overlap"
    assert elapsed >= 2.0


def test_lora_file_is_read_once_and_the_solver_passed_through(tiny, speech_2s, tmp_path, monkeypatch):
    """A LoRA file in the request is merged at load; the same file and scale reuse the pipeline (the
    file is read once); a new scale loads again; the chosen solver reaches the pipeline."""
    import torch
    from safetensors.torch import save_file

    import wan.models.lora as lora_module
    import wan.pipelines.pipeline_stableavatar as pipeline_module

    service = make_service(tiny, tmp_path)
    base = service.pipelines.get("model_full_load").transformer.blocks[0].self_attn.q
    lora = tmp_path / "style.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(2, base.in_features),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(base.out_features, 2)}, str(lora))  # fmt: skip
    reads, solvers = [], []
    read, build = lora_module.read_lora, pipeline_module.build_solver
    monkeypatch.setattr(lora_module, "read_lora", lambda path, model: reads.append(path) or read(path, model))
    monkeypatch.setattr(pipeline_module, "build_solver", lambda name, *a: solvers.append(name) or build(name, *a))

    service.generate(small(image=IMAGE, audio=speech_2s, lora_path=str(lora), sample_solver="unipc", sample_shift=3.0))
    merged = service.pipelines.get("model_full_load", str(lora), 1.0)
    assert (service.pipelines.loads, len(reads), solvers) == (2, 1, ["unipc"])
    assert not torch.equal(merged.transformer.blocks[0].self_attn.q.weight, base.weight), "the LoRA is merged"
    service.pipelines.get("model_full_load", str(lora), 0.5)
    assert (service.pipelines.loads, len(reads)) == (3, 2)
    with pytest.raises(AppError, match="LoRA file not found"):
        service.generate(small(image=IMAGE, audio=speech_2s, lora_path=str(tmp_path / "nope.safetensors")))
    with pytest.raises(AppError, match="solver 'heun'"):
        service.generate(small(image=IMAGE, audio=speech_2s, sample_solver="heun"))
