"""inference.py --batch_file end to end on CPU processes (gloo): the tiny checkpoint folder, 5 jobs
(one with an unreadable image), 64x64, 2 steps, under torchrun on 1, 2 and 2x2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from tests.conftest import EXAMPLES, REPO
from tests.distributed.workers import free_port
from wan.cli import batch, generation
from wan.cli import inference as cli

SECONDS = {"a0": 0.5, "a1": 1.0, "a2": 0.3, "a3": 0.6}
FLAGS = ["--width=64", "--height=64", "--clip_sample_n_frames=17", "--overlap_window_length=2", "--sample_steps=2", "--device=cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import soundfile as sf

    from wan.audio import load_audio
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    root = tmp_path_factory.mktemp("batch")
    ckpt = write_tiny_checkpoints(root / "ckpt")
    speech = load_audio(EXAMPLES / "case-2" / "audio.wav")
    for i, (name, seconds) in enumerate(SECONDS.items()):
        sf.write(root / f"{name}.wav", speech[i * 16000 : i * 16000 + int(seconds * 16000)], 16000)
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    rows = [
        {
            "reference": str(EXAMPLES / "case-1" / "reference.png"),
            "audio": "a0.wav",
            "prompt": "a woman is talking",
            "output_name": "first",
        },
        {"reference": str(EXAMPLES / "case-2" / "reference.png"), "audio": "a1.wav", "seed": 3, "width": 32},
        {"reference": "broken.png", "audio": "a2.wav", "output_name": "broken"},
        {"reference": str(EXAMPLES / "case-3" / "reference.png"), "audio": "a3.wav", "text_guide_scale": 4.0},
        {"reference": str(EXAMPLES / "case-4" / "reference.png"), "audio": "a2.wav", "audio_guide_scale": 3.0, "output_name": "last"},
    ]
    (root / "jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [f"--{k}={v}" for k, v in ckpt.items()] + ["--batch_file", str(root / "jobs.jsonl"), *FLAGS]
    return root, argv


GOOD = {"first", "a1", "a3", "last"}


def launch(argv: list[str], out_dir, torchrun: list[str] | None = None) -> subprocess.Popen:
    """inference.py in a fresh process (under ``torchrun`` when given), one CPU thread per process
    as torchrun sets it, so that every run sums in the same order, and x264 made reproducible
    (``tests/deterministic_inference.py``), so that equal frames give equal mp4s."""
    prefix = [sys.executable, "-m", "torch.distributed.run", *torchrun] if torchrun else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen([*prefix, str(REPO / "tests" / "deterministic_inference.py"), *argv, f"--output_dir={out_dir}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=900)
    return proc.returncode, err


def frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def results(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_make_the_single_process_videos_and_a_rerun_does_nothing(setup):
    root, argv = setup
    single, double = root / "single", root / "double"
    rc1, err1 = finish(launch(argv, single))
    rc2, err2 = finish(launch(argv, double, ["--nproc_per_node=2", f"--master_port={free_port()}"]))
    assert rc1 == 1 and rc2 == 1, (err1[-3000:], err2[-3000:])  # a job failed: the exit status says so
    for err in (err1, err2):
        assert "1 of 5 jobs cannot run" in err and "jobs.jsonl line 3: --validation_reference_path: cannot read image" in err
        assert "4 done, 0 skipped, 1 failed" in err
    assert "batch: 100%" in err2 and "| 5/5 [" in err2  # rank 0's bar counted rank 1's jobs too
    rows = results(double)
    assert [(r["name"], r["line"], r["status"]) for r in rows] == [
        ("first", 1, "done"), ("a1", 2, "done"), ("broken", 3, "failed"), ("a3", 4, "done"), ("last", 5, "done")
    ]  # fmt: skip
    assert {r["rank"] for r in rows if r["status"] == "done"} == {0, 1}, "both processes made videos"
    for name in GOOD:
        assert np.array_equal(frames(double / f"{name}.mp4"), frames(single / f"{name}.mp4")), name
    assert frames(double / "a1.mp4").shape == (25, 64, 32, 3)  # the line's width; 1 s: 25 frames, 2 windows

    # Rerun: every video exists complete, nothing is made again; the bad line fails again.
    mtimes = {p.name: p.stat().st_mtime_ns for p in double.glob("*.mp4")}
    rc3, err3 = finish(launch(argv, double, ["--nproc_per_node=2", f"--master_port={free_port()}"]))
    assert rc3 == 1 and "0 done, 4 skipped, 1 failed" in err3, err3[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in double.glob("*.mp4")} == mtimes
    assert [r["status"] for r in results(double)] == ["skipped", "skipped", "failed", "skipped", "skipped"]


@pytest.mark.slow
def test_two_nodes_of_two_processes_cover_every_job_once(setup):
    root, argv = setup
    out, port = root / "nodes", free_port()
    nodes = [
        launch(argv, out, ["--nnodes=2", f"--node_rank={n}", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}"])
        for n in range(2)
    ]
    (rc0, err0), (rc1, err1) = finish(nodes[0]), finish(nodes[1])
    assert (rc0, rc1) == (1, 0), (err0[-3000:], err1[-3000:])  # only rank 0 (node 0) reports the failed job
    rows = results(out)
    done = [r for r in rows if r["status"] == "done"]
    assert sorted(r["name"] for r in done) == sorted(GOOD) and len(done) == len(GOOD)
    # each job on the rank the split gives it, and each of the 4 ranks made one video
    jobs = batch.read_jobs(cli.parse_args([*argv, f"--output_dir={out}"]))
    owner = {job.name: group for group, share in enumerate(batch.shard(jobs, 4)) for job in share}
    assert {r["name"]: r["rank"] for r in done} == owner and sorted(owner.values()) == [0, 1, 2, 3]
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(f"{n}.mp4" for n in GOOD)


def test_an_interrupted_job_resumes_from_its_saved_steps(setup, tmp_path, monkeypatch):
    """Ctrl-C after step 1 of 2 keeps <name>.resume_state.safetensors; --resume finishes that job from
    step 1 and gives the uninterrupted video. In process (no torchrun)."""
    from tests.deterministic_inference import make_x264_deterministic
    from wan.runtime import resume
    from wan.utils import video_io

    monkeypatch.setattr(video_io._Output, "add_video", video_io._Output.add_video)  # undone after the test
    make_x264_deterministic()
    root, argv = setup
    (tmp_path / "one.jsonl").write_text(
        json.dumps({"reference": str(EXAMPLES / "case-1" / "reference.png"), "audio": str(root / "a3.wav"), "output_name": "job"})
    )
    for env in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(env, raising=False)
    args = [*argv, "--batch_file", str(tmp_path / "one.jsonl"), "--width=32", "--height=32"]
    assert cli.main([*args, f"--output_dir={tmp_path / 'whole'}"]) == 0

    saved = resume.StepSaver.__call__

    def interrupt_after_first_step(self, pipe, step, t, latents):
        saved(self, pipe, step, t, latents)
        raise KeyboardInterrupt

    monkeypatch.setattr(resume.StepSaver, "__call__", interrupt_after_first_step)
    with pytest.raises(KeyboardInterrupt):
        cli.main([*args, f"--output_dir={tmp_path / 'cut'}"])
    state = tmp_path / "cut" / f"job{batch.STATE_SUFFIX}"
    assert resume.load_state(state).steps_done == 1 and not (tmp_path / "cut" / "job.mp4").exists()
    monkeypatch.setattr(resume.StepSaver, "__call__", saved)

    started = []
    generate = generation.generate  # what wan.cli.batch calls for each job

    def recording(pipe, a, video, point, writer):
        started.append(point.start_step)
        return generate(pipe, a, video, point, writer)

    monkeypatch.setattr(generation, "generate", recording)
    assert cli.main([*args, f"--output_dir={tmp_path / 'cut'}", "--resume"]) == 0
    assert started == [1] and not state.exists()
    assert np.array_equal(frames(tmp_path / "cut" / "job.mp4"), frames(tmp_path / "whole" / "job.mp4"))
