"""inference.py --batch_file without models: reading and checking the job file, sharing the jobs
out, and the batch loop (skip, failures, results, exit status) on a stand-in pipeline."""

from __future__ import annotations

import json
import shlex
import sys
import types

import av
import pytest
import soundfile as sf
import torch

from tests.conftest import EXAMPLES
from wan.cli import batch
from wan.cli import inference as cli

REF = [str(EXAMPLES / f"case-{i}" / "reference.png") for i in range(1, 5)]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """Empty model folders (the weight-file check is stubbed) and four short audio files."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    for name in ("base", "wav2vec"):
        (tmp_path / name).mkdir()
    (tmp_path / "cfg.yaml").write_text("scheduler_kwargs: {shift: 5.0}\n")
    for i, seconds in enumerate([0.5, 1.0, 0.3, 0.8]):
        sf.write(tmp_path / f"a{i}.wav", torch.linspace(-0.5, 0.5, int(seconds * 16000)).numpy(), 16000)
    import wan.pipelines.loading as loading

    monkeypatch.setattr(loading, "checked_checkpoints", lambda *a, **k: None)
    return tmp_path


def argv(folder, jobs_file, *extra):
    return [
        "--batch_file", str(jobs_file), f"--output_dir={folder / 'out'}",
        f"--pretrained_model_name_or_path={folder / 'base'}", f"--pretrained_wav2vec_path={folder / 'wav2vec'}",
        f"--config_path={folder / 'cfg.yaml'}", "--overlap_window_length=5", "--width=32", "--height=32", *extra,
    ]  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# The job file
# ---------------------------------------------------------------------------------------------


def test_jsonl_and_csv_give_the_same_jobs_with_aliases_types_and_relative_paths(folder):
    rows = [
        {"reference": REF[0], "audio": "a0.wav", "prompt": "a woman is talking", "output_name": "first", "seed": 3},
        {"validation_reference_path": REF[1], "validation_driven_audio_path": "a1.wav", "validation_prompts": "a man",
         "width": 64, "height": 48, "sample_steps": 4, "sample_text_guide_scale": 3.5, "audio_guide_scale": 6},
    ]  # fmt: skip
    jsonl = write_jsonl(folder / "jobs.jsonl", rows)
    header = sorted({k for r in rows for k in r})
    csv_text = ",".join(header) + "\n" + "\n".join(",".join(f'"{r.get(k, "")}"' for k in header) for r in rows) + "\n"
    (folder / "jobs.csv").write_text(csv_text)
    got = {}
    for path in (jsonl, folder / "jobs.csv"):
        jobs = batch.read_jobs(cli.parse_args(argv(folder, path, "--seed=9", "--validation_prompts=global prompt")))
        assert [j.error for j in jobs] == [None, None]
        got[path.suffix] = [(j.line, j.name, {k: v for k, v in vars(j.args).items() if k != "batch_file"}) for j in jobs]
    # csv: the header is line 1; otherwise the same jobs
    assert [line for line, *_ in got[".csv"]] == [2, 3] and [line for line, *_ in got[".jsonl"]] == [1, 2]
    assert [rest for _, *rest in got[".csv"]] == [rest for _, *rest in got[".jsonl"]]
    (_, first, a), (_, second, b) = got[".jsonl"]
    assert first == "first" and second == "a1"  # output_name defaults to the audio's stem
    assert a["validation_driven_audio_path"] == str(folder / "a0.wav")  # relative to the batch file
    assert (a["seed"], a["prompt"], a["width"], a["sample_steps"]) == (3, "a woman is talking", 32, 50)  # the rest: the flags
    assert (b["seed"], b["prompt"], b["width"], b["height"], b["sample_steps"]) == (9, "a man", 64, 48, 4)
    assert (b["sample_text_guide_scale"], b["sample_audio_guide_scale"]) == (3.5, 6.0)


def test_a_line_may_pick_the_solver_and_shift(folder):
    rows = [
        {"reference": REF[0], "audio": "a0.wav", "sample_solver": "unipc", "sample_shift": 3},
        {"reference": REF[0], "audio": "a1.wav", "sample_solver": "heun"},
        {"reference": REF[0], "audio": "a2.wav", "sample_shift": -1},
        {"reference": REF[0], "audio": "a3.wav"},
    ]
    jobs = batch.read_jobs(cli.parse_args(argv(folder, write_jsonl(folder / "jobs.jsonl", rows), "--sample_solver=dpm++")))
    assert (jobs[0].error, jobs[0].args.sample_solver, jobs[0].args.sample_shift) == (None, "unipc", 3.0)
    assert "sample_solver='heun' must be one of euler, unipc, dpm++" in jobs[1].error
    assert "--sample_shift=-1.0 must be > 0" in jobs[2].error
    assert (jobs[3].error, jobs[3].args.sample_solver, jobs[3].args.sample_shift) == (None, "dpm++", None)


def test_every_bad_line_is_reported_with_its_number_and_the_good_ones_stay(folder):
    (folder / "broken.png").write_text("not an image")
    rows = [
        {"reference": REF[0], "audio": "a0.wav", "output_name": "good"},  # 1
        '{"reference": "x.png", "audio": ',  # 2: not JSON
        {"reference": REF[0], "audio": "a1.wav", "colour": "red"},  # 3: unknown field
        {"reference": REF[0]},  # 4: no audio
        {"reference": REF[0], "audio": "a2.wav", "width": 100},  # 5: not a multiple of 16
        {"reference": "broken.png", "audio": "a2.wav"},  # 6: unreadable image
        {"reference": REF[0], "audio": "a3.wav", "seed": "soon"},  # 7: not an int
        "",  # 8: blank, skipped
        {"reference": REF[1], "audio": "a1.wav", "output_name": "good"},  # 9: name of line 1
        {"reference": REF[1], "audio": "a1.wav", "output_name": "../escape"},  # 10
        {"reference": REF[2], "audio": "missing.wav"},  # 11
    ]
    jobs = batch.read_jobs(cli.parse_args(argv(folder, write_jsonl(folder / "jobs.jsonl", rows))))
    errors = {j.line: j.error for j in jobs}
    assert sorted(errors) == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11]
    expected = {
        1: "used by lines 1, 9", 2: "not valid JSON", 3: "unknown field(s) colour", 4: "--validation_driven_audio_path is required",
        5: "--width=100 must be a positive multiple of 16", 6: "cannot read image", 7: "seed='soon' is not an int",
        9: "used by lines 1, 9", 10: "must be a plain file name", 11: "driving audio not found",
    }  # fmt: skip
    for line, text in expected.items():
        assert text in errors[line], (line, errors[line])
    report = batch.error_report(jobs, "jobs.jsonl")
    assert "jobs.jsonl lines 1, 9: output_name 'good'" in report and "jobs.jsonl line 6: " in report


def test_main_reports_every_bad_line_before_any_model_loads(folder, monkeypatch, capsys):
    def must_not_load(*a, **k):
        raise AssertionError("a model was loaded although no job can run")

    monkeypatch.setitem(sys.modules, "wan.pipelines", types.SimpleNamespace(load_pipeline=must_not_load))
    rows = [{"reference": REF[0], "audio": "a0.wav", "width": 100}, {"reference": REF[0], "audio": "nope.wav"}]
    assert cli.main(argv(folder, write_jsonl(folder / "jobs.jsonl", rows))) == 2
    err = capsys.readouterr().err
    assert "2 of 2 jobs cannot run" in err and "line 1: --width=100" in err and "line 2: --validation_driven_audio_path" in err


@pytest.mark.parametrize(
    "extra,env,match",
    [
        (["--save_intermediate"], {}, "--save_intermediate"),
        (["--ulysses_degree=2"], {"WORLD_SIZE": "4"}, None),  # 2 groups of 2: fine
        (["--ulysses_degree=2"], {"WORLD_SIZE": "3"}, "divide the 3 process"),
        (["--ulysses_degree=2", "--gpus_per_job=3"], {"WORLD_SIZE": "6"}, "multiple of --ulysses_degree x --ring_degree = 2"),
        (["--gpus_per_job=2"], {"WORLD_SIZE": "4"}, None),
    ],
)
def test_global_flags_are_checked_once(folder, monkeypatch, extra, env, match):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    jobs_file = write_jsonl(folder / "jobs.jsonl", [{"reference": REF[0], "audio": "a0.wav"}])
    args = cli.parse_args(argv(folder, jobs_file, *extra))
    if match is None:
        assert [j.error for j in batch.validate_batch(args)] == [None]
    else:
        with pytest.raises(cli.InferenceArgumentError, match=match):
            batch.validate_batch(args)


def test_unknown_file_type_is_refused(folder):
    (folder / "jobs.txt").write_text("x")
    with pytest.raises(cli.InferenceArgumentError, match="use a .jsonl"):
        batch.read_jobs(cli.parse_args(argv(folder, folder / "jobs.txt")))


# ---------------------------------------------------------------------------------------------
# Sharing out
# ---------------------------------------------------------------------------------------------


def _jobs(costs):
    return [batch.Job(i + 1, f"j{i}", None, cost=c) for i, c in enumerate(costs)]


def test_shard_covers_every_job_once_longest_first_and_balances():
    costs = [5, 1, 9, 3, 3, 7, 2, 8, 4, 6]
    for groups in (1, 2, 3, 4, 16):
        shares = batch.shard(_jobs(costs), groups)
        assert len(shares) == groups
        lines = sorted(j.line for share in shares for j in share)
        assert lines == list(range(1, len(costs) + 1))
        for share in shares:
            assert [j.cost for j in share] == sorted((j.cost for j in share), reverse=True)
        loads = [sum(j.cost for j in share) for share in shares]
        biggest = max(costs)
        assert max(loads) - min(loads) <= biggest  # greedy longest-first: within one job of each other
    assert [[j.cost for j in s] for s in batch.shard(_jobs(costs), 2)] == [[9, 6, 5, 3, 1], [8, 7, 4, 3, 2]]  # 24 each
    # same answer on every rank: it depends on the jobs only, not on their order in memory
    shuffled = list(reversed(_jobs(costs)))
    assert [[j.line for j in s] for s in batch.shard(shuffled, 3)] == [[j.line for j in s] for s in batch.shard(_jobs(costs), 3)]


def test_shard_leaves_out_jobs_that_cannot_run():
    jobs = _jobs([3, 2, 1])
    jobs[0].error = "bad"
    assert [j.line for s in batch.shard(jobs, 2) for j in s] == [2, 3]


# ---------------------------------------------------------------------------------------------
# The loop, on a stand-in pipeline
# ---------------------------------------------------------------------------------------------


class FakePipeline:
    """Records each call; returns one frame per 40 ms of audio, grey level = seed; 'oom' in the prompt
    raises CUDA's out-of-memory error."""

    device = "cpu"

    def __init__(self):
        self.calls = []
        self.loads = 0

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, **kw):
        self.calls.append(kw)
        if "oom" in kw["prompt"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        frames = max(1, int(sf.info(kw["audio"]).duration * 25))
        level = (kw["generator"].initial_seed() % 100) / 100
        return types.SimpleNamespace(videos=torch.full((1, 3, frames, kw["height"], kw["width"]), level))


@pytest.fixture
def fake(monkeypatch):
    pipe = FakePipeline()

    def load_pipeline(*a, **k):
        pipe.loads += 1
        return pipe

    monkeypatch.setitem(sys.modules, "wan.pipelines", types.SimpleNamespace(load_pipeline=load_pipeline))
    return pipe


def test_batch_loads_once_writes_each_video_records_failures_and_reruns_as_a_no_op(folder, fake, capsys):
    rows = [
        {"reference": REF[0], "audio": "a0.wav", "output_name": "short", "seed": 10, "sample_steps": 3},
        {"reference": REF[1], "audio": "a1.wav", "output_name": "long", "width": 64},
        {"reference": REF[2], "audio": "nope.wav", "output_name": "bad"},
        {"reference": REF[3], "audio": "a3.wav", "output_name": "oom", "prompt": "oom please"},
    ]
    args = argv(folder, write_jsonl(folder / "jobs.jsonl", rows), "--seed=20")
    assert cli.main(args) == 1  # a job failed
    assert fake.loads == 1
    # most work first (audio seconds x pixels x steps): long, oom, short; each call with its own flags
    assert [c["prompt"] for c in fake.calls] == ["The protagonist is singing", "oom please", "The protagonist is singing"]
    long_call, short_call = fake.calls[0], fake.calls[2]
    assert (long_call["width"], long_call["num_inference_steps"], long_call["generator"].initial_seed()) == (64, 50, 20)
    assert (short_call["width"], short_call["num_inference_steps"], short_call["generator"].initial_seed()) == (32, 3, 10)
    out = folder / "out"
    assert sorted(p.name for p in out.iterdir()) == ["long.mp4", "results.jsonl", "short.mp4"]
    with av.open(str(out / "long.mp4")) as c:
        assert [s.type for s in c.streams] == ["video", "audio"] and c.streams.video[0].width == 64
        assert sum(1 for _ in c.decode(video=0)) == 25
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["name"], r["line"], r["status"]) for r in results] == [
        ("short", 1, "done"),
        ("long", 2, "done"),
        ("bad", 3, "failed"),
        ("oom", 4, "failed"),
    ]
    assert results[0]["frames"] == 12 and results[1]["frames"] == 25 and results[1]["seconds"] > 0
    assert "driving audio not found" in results[2]["error"] and "GPU_memory_mode" in results[3]["error"]
    err = capsys.readouterr().err
    assert "1 of 4 jobs cannot run" in err and "jobs.jsonl line 3:" in err and "2 done, 0 skipped, 2 failed" in err

    # Rerun: nothing is generated again, the same jobs fail, the same exit status.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    fake.calls.clear()
    assert cli.main(args) == 1
    assert [c["prompt"] for c in fake.calls] == ["oom please"]  # only the failed job is tried again
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == mtimes
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in results] == ["skipped", "skipped", "failed", "failed"] and results[1]["frames"] == 25


def test_a_damaged_video_is_made_again(folder, fake):
    rows = [{"reference": REF[0], "audio": "a0.wav", "output_name": "clip"}]
    args = argv(folder, write_jsonl(folder / "jobs.jsonl", rows))
    (folder / "out").mkdir()
    (folder / "out" / "clip.mp4").write_bytes(b"\x00" * 100)  # not a video: e.g. a copy cut short
    assert cli.main(args) == 0 and len(fake.calls) == 1
    assert batch.complete_video(folder / "out" / "clip.mp4") == 12


# ---------------------------------------------------------------------------------------------
# What ships
# ---------------------------------------------------------------------------------------------


def test_batch_inference_sh_and_the_example_job_file_parse(folder):
    from tests.conftest import REPO

    text = (REPO / "batch_inference.sh").read_text()
    command = text[text.rindex("inference.py \\") :].replace("\\\n", " ").split("\n", 1)[0]
    values = {
        "$BATCH_FILE": str(REPO / "examples" / "batch_jobs.jsonl"),
        "$OUTPUT_DIR": str(folder / "out"),
        "$ULYSSES_DEGREE": "1",
        "$RING_DEGREE": "1",
    }
    tokens = []
    for token in shlex.split(command)[1:]:
        for name, value in values.items():
            token = token.replace(name, value)
        if token != "$@":
            tokens.append(token)
    args = cli.parse_args(tokens)
    assert args.batch_file.endswith("examples/batch_jobs.jsonl") and args.sample_steps == 50 and args.overlap_window_length == 10
    for flag, value in (
        ("pretrained_model_name_or_path", folder / "base"),
        ("pretrained_wav2vec_path", folder / "wav2vec"),
        ("transformer_path", None),
    ):
        setattr(args, flag, None if value is None else str(value))
    jobs = batch.read_jobs(args)
    assert [j.error for j in jobs] == [None] * 3 and [j.name for j in jobs] == ["case-1", "case-2", "case-3"]
    assert jobs[2].args.seed == 7 and all(j.args.validation_reference_path.startswith(str(REPO / "examples")) for j in jobs)
