"""Every shipped launcher parses through our parser; the entry points are shims; dead flags warn."""

import ast
import re
import shlex
from pathlib import Path

import pytest

from wan.training import cli
from wan.training.config import TRAIN_PRESETS

REPO = Path(__file__).resolve().parents[2]
SHIMS = {"train_1B_square.py": "1B_square", "train_1B_vec_rec.py": "1B_vec_rec", "train_1B_rec_vec.py": "1B_vec_rec", "train_14B.py": "14B"}
LAUNCHERS = sorted(p.name for p in REPO.glob("train_*.sh"))


def launcher_command(path: Path) -> tuple[str, list[str]]:
    """(entry script, its arguments) of a launcher, shell variables replaced by placeholders."""
    text = path.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if "accelerate launch" in ln)
    line = re.sub(r"\$\{?(\w+)\}?", r"VAR_\1", line)
    words = shlex.split(line)
    entry = next(i for i, w in enumerate(words) if w.endswith(".py"))
    return words[entry], words[entry + 1 :]


def test_all_eight_launchers_are_shipped():
    assert LAUNCHERS == sorted(
        ["train_1B_square.sh", "train_1B_square_64.sh", "train_1B_rec_vec.sh", "train_1B_rec_vec_64.sh", "train_1B_rec_vec_lora.sh",
         "train_1B_rec_vec_lora_64.sh", "train_14B.sh", "train_14B_lora.sh"]
    )


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_parses(name):
    entry, argv = launcher_command(REPO / name)
    assert entry in SHIMS, f"{name} launches {entry}, not a training entry point"
    preset = SHIMS[entry]
    with pytest.warns(UserWarning, match="video_repeat"):  # the original's unused flag, kept
        args = cli.parse_args(preset, argv)
    cfg = cli.to_config(preset, args)
    assert sorted(cfg.data.lists) == sorted(b.name for b in TRAIN_PRESETS[preset].buckets)
    assert cfg.data.video_sample_n_frames == 81 and cfg.data.train_batch_size == 1
    assert cfg.run.mixed_precision == "bf16" and cfg.model.gradient_checkpointing
    assert cfg.loss.uniform_sampling and cfg.loss.motion_sub_loss and cfg.optim.max_grad_norm == 0.05
    assert cfg.lora.enabled == ("lora" in name)
    if cfg.lora.enabled:
        assert (cfg.lora.rank, cfg.lora.alpha) == (128, 64.0)
    assert cfg.run.use_deepspeed == name.startswith("train_14B")
    config_file = re.search(r"--config_file (\S+)", (REPO / name).read_text())
    if config_file:
        assert (REPO / config_file.group(1)).is_file()


@pytest.mark.parametrize("script,preset", sorted(SHIMS.items()))
def test_entry_points_are_shims(script, preset):
    tree = ast.parse((REPO / script).read_text())
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert len(body) == 2, f"{script} should only import and call wan.training.cli.main"
    imp, guard = body
    assert isinstance(imp, ast.ImportFrom) and imp.module == "wan.training.cli" and [a.name for a in imp.names] == ["main"]
    call = guard.body[0].value
    assert isinstance(guard, ast.If) and len(guard.body) == 1 and call.func.id == "main"
    assert call.keywords[0].arg == "preset" and call.keywords[0].value.value == preset


def test_unused_flag_warns_and_required_data_flag_is_named(tmp_path):
    with pytest.warns(UserWarning, match="--use_ema"):
        args = cli.parse_args("1B_vec_rec", ["--use_ema", "--train_data_rec_dir", "x"])
    cfg = cli.to_config("1B_vec_rec", args)
    with pytest.raises(SystemExit, match="--train_data_vec_dir"):
        cli.validate(cfg)


def test_14b_preset_trains_three_buckets_with_clip_dropout():
    cfg = cli.to_config("14B", cli.parse_args("14B", []))
    assert [b.name for b in cfg.buckets] == ["rec", "square", "vec"] and cfg.loss.clip_dropout == 0.1
    assert cfg.run.validation_size is None and not cfg.checkpoint.save_final


def test_bucket_size_overrides_buckets_and_the_validation_size():
    cfg = cli.to_config("1B_vec_rec", cli.parse_args("1B_vec_rec", ["--bucket_size", "vec=256x448", "--bucket_size=rec=448x256"]))
    assert cfg.data.sizes == {"rec": (448, 256), "vec": (256, 448)}
    assert cfg.run.validation_size == (256, 448)  # the original validated 1B_vec_rec at the vec size
    assert cli.to_config("1B_square", cli.parse_args("1B_square", [])).run.validation_size == (512, 512)
    with pytest.raises(SystemExit):  # argparse: not a multiple of 16
        cli.parse_args("1B_square", ["--bucket_size", "square=500x500"])
    with pytest.raises(SystemExit, match="has the buckets"):
        cli.to_config("1B_square", cli.parse_args("1B_square", ["--bucket_size", "vec=256x448"]))


def test_missing_validation_file_is_named_before_training(tmp_path):
    data = tmp_path / "video_square_path.txt"
    data.write_text("clip\n")
    argv = [f"--train_data_square_dir={data}", "--pretrained_model_name_or_path=m", "--pretrained_wav2vec_path=w",
            f"--validation_reference_path={tmp_path / 'nope.png'}", f"--validation_driven_audio_path={data}"]  # fmt: skip
    with pytest.raises(SystemExit, match="--validation_reference_path .*nope.png: file not found"):
        cli.validate(cli.to_config("1B_square", cli.parse_args("1B_square", argv)))
