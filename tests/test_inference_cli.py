"""inference.py's command line: every original flag, dead flags, defaults, validation, and main()."""

from __future__ import annotations

import functools
import logging
import shlex
import subprocess
import sys
import types

import av
import numpy as np
import pytest
import torch

from tests.conftest import EXAMPLES, REPO
from wan.cli import inference as cli
from wan.cli import validation

# The original inference.py's flags (PIPELINE.md §2): name -> (type, default). seed and
# sample_steps had default None (and crashed); ours default to 42 and 50.
ORIGINAL_FLAGS = {
    "input_perturbation": (float, 0),
    "pretrained_model_name_or_path": (str, None),
    "transformer_path": (str, None),
    "revision": (str, None),
    "variant": (str, None),
    "output_dir": (str, None),
    "width": (int, 512),
    "height": (int, 512),
    "validation_prompts": (str, "The protagonist is singing"),
    "pretrained_wav2vec_path": (str, None),
    "validation_reference_path": (str, None),
    "validation_driven_audio_path": (str, None),
    "offload_model": ("flag", False),
    "ulysses_degree": (int, 1),
    "ring_degree": (int, 1),
    "t5_fsdp": ("flag", False),
    "t5_cpu": ("flag", False),
    "fsdp_dit": ("flag", False),
    "seed": (int, 42),
    "motion_frame": (int, 25),
    "sample_steps": (int, 50),
    "sample_shift": (float, None),
    "sample_text_guide_scale": (float, 5.0),
    "sample_audio_guide_scale": (float, 4.0),
    "overlap_window_length": (int, 10),
    "config_path": (str, None),
    "enable_teacache": ("flag", False),
    "teacache_threshold": (float, 0.10),
    "num_skip_start_steps": (int, 5),
    "teacache_offload": ("flag", False),
    "GPU_memory_mode": (str, "model_full_load"),
    "clip_sample_n_frames": (int, 81),
    "overlapping_weight_scheme": (str, "uniform"),
}
EXTRA_FLAGS = {"save_intermediate", "attention_backend", "device", "save_every", "resume", "compile", "sdpa_kernel", "last_window_true_length", "vae_dtype", "compile_cache_dir", "fast", "batch_file", "gpus_per_job"}
EXTRA_FLAGS |= {"sample_solver", "lora_path", "lora_no_merge"}  # issue 15 (sample_shift is an original flag, now live)
REQUIRED = ["--pretrained_model_name_or_path=m"]


def parser_actions() -> dict[str, object]:
    return {a.dest: a for a in cli.build_parser()._actions if a.dest != "help"}


def test_every_original_flag_has_the_same_name_type_and_default():
    actions = parser_actions()
    assert set(ORIGINAL_FLAGS) | EXTRA_FLAGS == set(actions)
    for name, (kind, default) in ORIGINAL_FLAGS.items():
        action = actions[name]
        assert action.option_strings == [f"--{name}"]
        if kind == "flag":
            assert action.nargs == 0 and action.default is False, name
        else:
            assert action.type is kind, name
            assert action.default == default, name
        assert action.help and len(action.help) > 10, f"--{name} has no help"
    assert actions["validation_prompts"].nargs == "+"
    assert actions["pretrained_model_name_or_path"].required


def test_every_flag_parses():
    argv = [
        "--pretrained_model_name_or_path=m", "--transformer_path=t.pt", "--pretrained_wav2vec_path=w", "--config_path=c.yaml",
        "--validation_reference_path=r.png", "--validation_driven_audio_path=a.wav", "--validation_prompts", "a", "woman",
        "--output_dir=o", "--save_intermediate", "--width=480", "--height=832", "--seed=7", "--sample_steps=10",
        "--sample_text_guide_scale=3.0", "--sample_audio_guide_scale=5.5", "--clip_sample_n_frames=77",
        "--overlap_window_length=5", "--overlapping_weight_scheme=log", "--GPU_memory_mode=model_cpu_offload",
        "--attention_backend=sdpa", "--device=cpu", "--enable_teacache", "--teacache_threshold=0.2",
        "--num_skip_start_steps=3", "--teacache_offload", "--ulysses_degree=2", "--ring_degree=2", "--fsdp_dit",
        "--input_perturbation=0.1", "--revision=r", "--variant=fp16", "--offload_model", "--t5_fsdp", "--t5_cpu",
        "--motion_frame=25", "--sample_shift=3.0",
    ]  # fmt: skip
    args = cli.parse_args(argv)
    assert args.prompt == "a woman"
    assert (args.width, args.height, args.seed, args.sample_steps) == (480, 832, 7, 10)
    assert (args.clip_sample_n_frames, args.overlap_window_length, args.overlapping_weight_scheme) == (77, 5, "log")
    assert args.sample_audio_guide_scale == 5.5 and args.teacache_threshold == 0.2
    assert args.save_intermediate and args.enable_teacache and args.fsdp_dit and args.t5_cpu
    assert (args.GPU_memory_mode, args.attention_backend, args.device) == ("model_cpu_offload", "sdpa", "cpu")
    assert (args.ulysses_degree, args.ring_degree, args.sample_shift) == (2, 2, 3.0)


def test_defaults():
    args = cli.parse_args(REQUIRED)
    assert args.seed == 42 and args.sample_steps == 50
    assert args.prompt == "The protagonist is singing"
    assert args.attention_backend == "auto" and args.device is None and not args.save_intermediate


def test_dead_flags_warn_even_at_their_default(caplog):
    with caplog.at_level(logging.WARNING, logger="wan.inference"):
        cli.parse_args([*REQUIRED, "--motion_frame=25", "--t5_fsdp", "--revision=x", "--offload_model"])
    warned = {r.getMessage().split()[0] for r in caplog.records}
    assert warned == {"--motion_frame", "--t5_fsdp", "--revision", "--offload_model"}
    assert all("ignored" in r.getMessage() for r in caplog.records)


def test_dead_flags_given_as_abbreviation_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="wan.inference"):
        args = cli.parse_args([*REQUIRED, "--motion=3"])
    assert args.motion_frame == 3
    assert "--motion_frame is accepted for compatibility and ignored" in caplog.text


def test_live_flags_do_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="wan.inference"):
        cli.parse_args([*REQUIRED, "--seed=1", "--width=512", "--fsdp_dit", "--validation_prompts=one prompt"])
    assert caplog.records == []


def test_several_prompt_words_are_joined_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="wan.inference"):
        args = cli.parse_args([*REQUIRED, "--validation_prompts", "a", "singing", "man"])
    assert args.prompt == "a singing man"
    assert "joined into one prompt" in caplog.text


@pytest.mark.parametrize("mode", cli.MEMORY_MODES)
def test_memory_modes_accepted(mode):
    assert len(cli.MEMORY_MODES) == 4
    assert cli.parse_args([*REQUIRED, f"--GPU_memory_mode={mode}"]).GPU_memory_mode == mode


@pytest.mark.parametrize(
    "argv", [["--GPU_memory_mode=normal"], ["--overlapping_weight_scheme=linear"], ["--attention_backend=usp"], ["--width=abc"]]
)
def test_bad_choices_exit(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args([*REQUIRED, *argv])
    assert exc.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_attention_choices_are_backends_of_the_model():
    from wan.models.attention import BACKENDS

    assert set(cli.ATTENTION_BACKENDS) <= set(BACKENDS)


def test_inference_sh_flags_parse():
    """The python command of the shipped inference.sh parses through our parser."""
    text = (REPO / "inference.sh").read_text()
    command = text[text.rindex(".venv/bin/python inference.py") :].replace("\\\n", " ")
    tokens = shlex.split(command.split("\n", 1)[0])[2:]
    tokens = [t for t in tokens if t != "$@"]
    args = cli.parse_args(tokens)
    assert args.sample_steps == 50 and args.overlap_window_length == 5 and args.clip_sample_n_frames == 81
    assert args.sample_text_guide_scale == 3.0 and args.sample_audio_guide_scale == 5.0
    assert args.GPU_memory_mode == "model_full_load" and args.seed == 42
    assert args.validation_reference_path == "$REFERENCE" and "REFERENCE:-examples/case-1/reference.png" in text


# ---------------------------------------------------------------------------------------------
# validate()
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def valid_argv(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    (tmp_path / "base").mkdir()
    (tmp_path / "wav2vec").mkdir()
    (tmp_path / "cfg.yaml").write_text("scheduler_kwargs: {shift: 5.0}\n")
    (tmp_path / "sa.pt").write_bytes(b"")
    return [
        f"--pretrained_model_name_or_path={tmp_path / 'base'}",
        f"--pretrained_wav2vec_path={tmp_path / 'wav2vec'}",
        f"--transformer_path={tmp_path / 'sa.pt'}",
        f"--config_path={tmp_path / 'cfg.yaml'}",
        f"--validation_reference_path={EXAMPLES / 'case-2' / 'reference.png'}",
        f"--validation_driven_audio_path={EXAMPLES / 'case-2' / 'audio.wav'}",
        f"--output_dir={tmp_path / 'out'}",
        "--overlap_window_length=5",
    ]


def test_valid_arguments_pass(valid_argv):
    cli.validate(cli.parse_args(valid_argv), check_checkpoints=False)


def test_checkpoint_files_are_checked(valid_argv):
    """Empty model folders: validate lists the missing weight files with their downloads."""
    with pytest.raises(cli.InferenceArgumentError, match="checkpoint problem") as exc:
        cli.validate(cli.parse_args(valid_argv))
    message = str(exc.value)
    assert "config.json" in message and "Wan2.1_VAE.pth" in message and "model.safetensors" in message
    assert "sa.pt" in message  # the empty StableAvatar file is reported too


def test_default_config_path_is_the_shipped_yaml(valid_argv):
    args = cli.parse_args([a for a in valid_argv if not a.startswith("--config_path")])
    cli.validate(args, check_checkpoints=False)
    assert args.config_path == str(cli.DEFAULT_CONFIG) and cli.DEFAULT_CONFIG.is_file()


def test_missing_default_config_names_it(valid_argv, monkeypatch, tmp_path):
    args = cli.parse_args([a for a in valid_argv if not a.startswith("--config_path")])
    monkeypatch.setattr(validation, "DEFAULT_CONFIG", tmp_path / "deepspeed_config" / "wan2.1" / "wan_civitai.yaml")  # a checkout without it
    with pytest.raises(cli.InferenceArgumentError, match="--config_path.*wan_civitai.yaml"):
        cli.validate(args, check_checkpoints=False)


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--overlap_window_length=21"], "overlap_window_length=21"),
        (["--clip_sample_n_frames=33", "--overlap_window_length=9"], "overlap_window_length=9"),
        (["--overlap_window_length=-1"], "overlap_window_length=-1"),
        (["--width=500"], "--width=500 must be a positive multiple of 16"),
        (["--height=0"], "--height=0"),
        (["--clip_sample_n_frames=80"], "4k\\+1"),
        (["--sample_steps=0"], "--sample_steps"),
        (["--ulysses_degree=2"], "torchrun --nproc_per_node=2"),
        (["--ring_degree=0"], "--ring_degree"),
        (["--fsdp_dit"], "--fsdp_dit"),
        (["--teacache_threshold=-1"], "teacache"),
        (["--validation_reference_path=/nope/ref.png"], "reference image not found: /nope/ref.png"),
        (["--validation_driven_audio_path=/nope/a.wav"], "driving audio not found: /nope/a.wav"),
        (["--pretrained_model_name_or_path=/nope/base"], "checkpoints/README.md"),
        (["--pretrained_wav2vec_path=/nope/w2v"], "wav2vec2 folder not found: /nope/w2v"),
        (["--transformer_path=/nope/sa.pt"], "StableAvatar weights not found: /nope/sa.pt"),
        (["--config_path=/nope/c.yaml"], "/nope/c.yaml"),
        (["--output_dir="], "--output_dir is required"),
        (["--sample_shift=0"], "--sample_shift=0.0 must be > 0"),
        (["--lora_path=/nope/style.safetensors:0.5"], "LoRA file not found: /nope/style.safetensors"),
    ],
)
def test_validation_errors(valid_argv, extra, match):
    args = cli.parse_args([*valid_argv, *extra])
    with pytest.raises(cli.InferenceArgumentError, match=match):
        cli.validate(args, check_checkpoints=False)


def test_missing_required_inputs(valid_argv):
    for flag, match in [("--validation_reference_path", "reference image"), ("--validation_driven_audio_path", "driving audio"),
                        ("--pretrained_wav2vec_path", "wav2vec2"), ("--output_dir", "folder that receives the video")]:  # fmt: skip
        args = cli.parse_args([a for a in valid_argv if not a.startswith(flag)])
        with pytest.raises(cli.InferenceArgumentError, match=f"{flag} is required.*{match}"):
            cli.validate(args, check_checkpoints=False)


def test_unreadable_inputs(valid_argv, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(cli.InferenceArgumentError, match="cannot read image .*bad.png"):
        cli.validate(check_checkpoints=False, args=cli.parse_args([*valid_argv, f"--validation_reference_path={tmp_path / 'bad.png'}"]))
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(cli.InferenceArgumentError, match="cannot read audio .*bad.wav"):
        cli.validate(check_checkpoints=False, args=cli.parse_args([*valid_argv, f"--validation_driven_audio_path={tmp_path / 'bad.wav'}"]))


def test_world_size_matching_degrees_passes(valid_argv, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    cli.validate(check_checkpoints=False, args=cli.parse_args([*valid_argv, "--ulysses_degree=2", "--ring_degree=2", "--fsdp_dit"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_device_without_cuda(valid_argv):
    with pytest.raises(cli.InferenceArgumentError, match="CUDA is not available"):
        cli.validate(check_checkpoints=False, args=cli.parse_args([*valid_argv, "--device=cuda"]))


# ---------------------------------------------------------------------------------------------
# main()
# ---------------------------------------------------------------------------------------------


def test_main_reports_validation_errors_before_loading(valid_argv, monkeypatch, capsys):
    def must_not_load(*a, **k):
        raise AssertionError("a model was loaded before validation")

    monkeypatch.setitem(sys.modules, "wan.pipelines", types.SimpleNamespace(load_pipeline=must_not_load))
    assert cli.main([*valid_argv, "--width=100"]) == 2
    assert "inference.py: error: --width=100" in capsys.readouterr().err


@pytest.fixture
def no_checkpoint_check(monkeypatch):
    """main() on empty model folders: skip only the weight-file check (tested above)."""
    monkeypatch.setattr(cli, "validate", functools.partial(cli.validate, check_checkpoints=False))


def test_main_without_pipeline_says_so(valid_argv, monkeypatch, no_checkpoint_check):
    monkeypatch.setitem(sys.modules, "wan.pipelines", types.ModuleType("wan.pipelines"))  # no load_pipeline
    with pytest.raises(SystemExit, match="pipeline not available"):
        cli.main(valid_argv)


class FakePipeline:
    """Stands in for the real pipeline: records the call, returns 1 s of frames in [0, 1]."""

    device = "cpu"

    def __init__(self, **loader_kwargs):
        self.loader_kwargs = loader_kwargs
        self.call_kwargs = None

    def __call__(self, **kwargs):
        self.call_kwargs = kwargs
        t = torch.linspace(0, 1, 25).view(1, 1, 25, 1, 1).expand(1, 3, 25, kwargs["height"], kwargs["width"])
        if kwargs.get("output_type") == "stream":  # decoder chunks in [-1, 1]: 1 frame, then 4 at a time
            return types.SimpleNamespace(videos=(t[:, :, i : i + (1 if i == 0 else 4)] * 2 - 1 for i in [0, *range(1, 25, 4)]))
        return types.SimpleNamespace(videos=t.clone())


@pytest.fixture
def fake_loader(monkeypatch):
    """``wan.pipelines.load_pipeline`` replaced by FakePipeline; the dict gets the pipeline it made."""
    made = {}

    def load_pipeline(path, **kwargs):
        made["pipe"] = FakePipeline(path=path, **kwargs)
        return made["pipe"]

    monkeypatch.setitem(sys.modules, "wan.pipelines", types.SimpleNamespace(load_pipeline=load_pipeline))
    return made


def test_main_runs_pipeline_and_writes_video_with_audio(valid_argv, tmp_path, fake_loader, no_checkpoint_check):
    made = fake_loader
    argv = [*valid_argv, "--width=64", "--height=32", "--save_intermediate", "--sample_steps=3", "--seed=5"]
    assert cli.main(argv) == 0
    pipe = made["pipe"]
    assert pipe.loader_kwargs["memory_mode"] == "model_full_load"
    assert pipe.loader_kwargs["attention_backend"] == "auto"
    call = pipe.call_kwargs
    assert (call["height"], call["width"], call["num_inference_steps"], call["overlap_window_length"]) == (32, 64, 3, 5)
    assert call["generator"].initial_seed() == 5 and call["output_type"] == "stream"
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["cropped_audio.wav", "video_with_audio.mp4", "video_without_audio.mp4"]
    with av.open(str(out / "video_with_audio.mp4")) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 25 and frames[0].shape == (32, 64, 3)
    assert frames[0].mean() < 5 and frames[-1].mean() > 250  # the fake's ramp from black to white


def test_solver_and_lora_flags_reach_the_pipeline(valid_argv, tmp_path, fake_loader, no_checkpoint_check):
    made = fake_loader
    for name in ("a.safetensors", "b.safetensors"):
        (tmp_path / name).write_bytes(b"")
    loras = [f"--lora_path={tmp_path / 'a.safetensors'}:0.5", f"--lora_path={tmp_path / 'b.safetensors'}"]
    assert cli.main([*valid_argv, "--width=64", "--height=32", "--sample_solver=unipc", "--sample_shift=3", *loras, "--lora_no_merge"]) == 0
    pipe = made["pipe"]
    assert pipe.loader_kwargs["loras"] == [f"{tmp_path / 'a.safetensors'}:0.5", str(tmp_path / "b.safetensors")]
    assert pipe.loader_kwargs["lora_merge"] is False
    assert (pipe.call_kwargs["sample_solver"], pipe.call_kwargs["sample_shift"]) == ("unipc", 3.0)
    defaults = cli.parse_args(valid_argv)
    assert (defaults.sample_solver, defaults.sample_shift, defaults.lora_path, defaults.lora_no_merge) == ("euler", None, [], False)


def test_uint8_chunks_truncates_like_the_original():
    videos = torch.tensor([0.0, 0.5, 1.0, 0.999]).view(1, 1, 4, 1, 1).expand(1, 3, 4, 2, 2)
    chunks = list(cli._uint8_chunks(types.SimpleNamespace(videos=videos), chunk_frames=3))
    assert [c.shape for c in chunks] == [(3, 2, 2, 3), (1, 2, 2, 3)]
    assert np.concatenate(chunks)[:, 0, 0, 0].tolist() == [0, 127, 255, 254]
    as_array = list(cli._uint8_chunks(types.SimpleNamespace(videos=videos.numpy())))
    assert np.array_equal(np.concatenate(as_array), np.concatenate(chunks))
    streamed = list(cli._uint8_chunks(iter([videos[:, :, :2] * 2 - 1, videos[:, :, 2:] * 2 - 1])))
    assert np.array_equal(np.concatenate(streamed), np.concatenate(chunks))  # [-1, 1] chunks, same bytes
    passthrough = [np.zeros((1, 2, 2, 3), np.uint8)]
    assert list(cli._uint8_chunks(iter(passthrough))) == passthrough


def test_help_lists_every_flag():
    out = subprocess.run([sys.executable, "inference.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in [*ORIGINAL_FLAGS, *EXTRA_FLAGS]:
        assert f"--{name}" in out.stdout
