"""Several videos: ``inference.py --batch_file`` (models loaded once) against one ``inference.py``
run per video (models loaded every time), and the batch on 1 GPU against N GPUs.

    python bench/batch.py                       # GPU: 4 jobs of 5 s at 480x832, 2 steps, full-size random weights
    python bench/batch.py --ckpt_dir /tmp/rnd --variants ""         # write the checkpoints, fill the compile cache
    python bench/batch.py --ckpt_dir /tmp/rnd --variants separate   # then one variant per call (each under 10 minutes)
    python bench/batch.py --variants batch --gpus 1,2               # the batch on 1 GPU, then on 2 (torchrun, a video per GPU)
    python bench/batch.py --tiny                # CPU check of the script: tiny checkpoints, 64x64, 1-s jobs
    python bench/batch.py --tiny --variants batch --gpus 1,2        # CPU check of the torchrun path (2 processes, gloo)

Both variants run ``inference.py`` as a user does, in fresh processes, so each time covers Python
start-up, imports, reading every weight file, the jobs, and writing the mp4s. The weights are the
full-size models of ``wan.testing.random_models`` written once in the release layout to
``--ckpt_dir`` (about 20 GB; reused when present), so reading them costs what reading the release
costs from the same disk; after the first read they come from the page cache, for both variants
alike. The audio is four different 5-s cuts of examples/case-2's speech, the references are
examples/case-1..4. The DiT runs as inference.py's default (compiled on one GPU, persistent compile
cache in ``--ckpt_dir``); one untimed job fills that cache first, so that neither variant pays the
one-off compilation. ``--eager`` times the eager DiT instead.

``--gpus 1,N``: the batch variant once per entry, 1 as ``python inference.py --batch_file`` and N
as ``torchrun --standalone --nproc_per_node N inference.py --batch_file`` (batch_inference.sh's
launch: N groups of one GPU, each loading the models once and making its share of the jobs).
torch.compile's cache is keyed by the GPU index, so with N > 1 the untimed fill runs under the
same torchrun (one job per rank). Recorded (``bench.common.record``): ``batch_vs_separate_total``
per variant (the batch on one GPU), and, when both ran in one call, ``batch_vs_separate_saved``
(seconds saved by loading once); for every batch run ``batch_jobs_per_hour`` (field ``gpus``;
wall time from launch to the last mp4, so the model loading counts; ``jobs_per_hour_excl_load``
counts only the slowest GPU's job seconds, what a batch of many more jobs tends to); with 1 and
N in ``--gpus``, ``batch_multi_gpu_speedup`` (jobs per hour on N over 1; goal >= 1.9 on 2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import record  # noqa: E402

FULL = dict(jobs=4, seconds=5.0, height=480, width=832, steps=2)
TINY = dict(jobs=4, seconds=1.0, height=64, width=64, steps=2)


def make_jobs(folder: Path, jobs: int, seconds: float) -> Path:
    """``jobs`` lines: examples/case-<i>/reference.png with the i-th ``seconds`` of the case-2 speech."""
    import soundfile as sf

    from wan.audio import load_audio

    speech = load_audio(REPO / "examples" / "case-2" / "audio.wav")
    n = int(seconds * 16000)
    if len(speech) < jobs * n:
        raise SystemExit(f"examples/case-2/audio.wav holds {len(speech) / 16000:.0f} s: too short for {jobs} jobs of {seconds} s")
    rows = []
    for i in range(jobs):
        sf.write(folder / f"speech{i}.wav", speech[i * n : (i + 1) * n], 16000)
        reference = REPO / "examples" / f"case-{i % 6 + 1}" / "reference.png"
        rows.append(
            {
                "reference": str(reference),
                "audio": f"speech{i}.wav",
                "prompt": "a person is talking to the camera",
                "output_name": f"job{i}",
            }
        )
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def inference(flags: list[str], gpus: int = 1) -> float:
    """Wall seconds of one ``inference.py`` run (under ``torchrun`` on ``gpus`` > 1 processes); its
    output is shown, a failure stops the bench."""
    from bench.multi_gpu import NO_MULTICAST

    launch = [sys.executable]
    if gpus > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    start = time.perf_counter()
    subprocess.run([*launch, str(REPO / "inference.py"), *flags], cwd=REPO, check=True, env={**NO_MULTICAST, **os.environ})
    return time.perf_counter() - start


def job_rates(results: Path, jobs: int, seconds: float) -> dict:
    """From a batch's results.jsonl: each job's seconds and the jobs-per-hour figures."""
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    busy: dict = {}
    for r in rows:
        busy[r["rank"]] = busy.get(r["rank"], 0.0) + r["seconds"]
    return dict(
        jobs_per_hour=round(jobs * 3600 / seconds, 1),
        jobs_per_hour_excl_load=round(jobs * 3600 / max(busy.values()), 1),
        job_seconds=[round(r["seconds"], 1) for r in rows],
        job_ranks=[r["rank"] for r in rows],
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny checkpoints on the CPU (checks the script, not a measurement)")
    p.add_argument("--variants", default="separate,batch", help="comma list of separate, batch")
    p.add_argument("--ckpt_dir", default=None, help="folder for the random full-size checkpoints (default: a temporary folder)")
    p.add_argument("--eager", action="store_true", help="inference.py --eager (no torch.compile) in both variants")
    p.add_argument("--gpus", default="1", help="comma list of GPU counts for the batch variant: 1 = one process, N > 1 = torchrun (--tiny: CPU processes)")
    p.add_argument("--jobs", type=int, default=None, help="number of jobs (default 4; examples/case-2's 40 s of speech hold 8 of 5 s)")
    args = p.parse_args()
    case = dict(TINY if args.tiny else FULL)
    case["jobs"] = args.jobs or case["jobs"]
    gpu_counts = [int(g) for g in args.gpus.split(",")]
    variants = list(filter(None, args.variants.split(",")))
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    ckpt_dir = Path(args.ckpt_dir or work / "ckpt")
    if args.tiny:
        from wan.testing.tiny_checkpoints import write_tiny_checkpoints

        paths = write_tiny_checkpoints(ckpt_dir)
    elif (ckpt_dir / "wan_civitai.yaml").is_file():
        from wan.testing.tiny_checkpoints import BASE

        paths = {
            "pretrained_model_name_or_path": ckpt_dir / BASE,
            "transformer_path": ckpt_dir / "StableAvatar-1.3B" / "transformer3d-square.pt",
            "pretrained_wav2vec_path": ckpt_dir / "wav2vec2-base-960h",
            "config_path": ckpt_dir / "wan_civitai.yaml",
        }
    else:
        import torch

        from wan.testing.random_models import write_random_checkpoints

        start = time.perf_counter()
        paths = write_random_checkpoints(ckpt_dir)
        torch.cuda.empty_cache()
        print(f"wrote the random full-size checkpoints to {ckpt_dir} in {time.perf_counter() - start:.0f} s", flush=True)
    jobs_file = make_jobs(work, case["jobs"], case["seconds"])
    common = [f"--{k}={v}" for k, v in paths.items()] + [
        f"--height={case['height']}", f"--width={case['width']}", f"--sample_steps={case['steps']}", "--save_every=0",
    ]  # fmt: skip
    if args.tiny:
        common += ["--device=cpu", "--clip_sample_n_frames=17", "--overlap_window_length=2"]
    common += ["--eager"] if args.eager else [f"--compile_cache_dir={ckpt_dir / 'compile_cache'}"]
    top = min(max(gpu_counts), case["jobs"])
    warm = ckpt_dir / "compile_cache" / f".filled-{top}gpu"
    if not args.tiny and not args.eager and not warm.exists():  # fill it (untimed), as earlier runs would have
        rows = jobs_file.read_text().splitlines()
        if top == 1:
            row = json.loads(rows[0])
            inference([*common, f"--validation_reference_path={row['reference']}", f"--validation_driven_audio_path={work / row['audio']}",
                       f"--output_dir={work / 'warmup'}"])  # fmt: skip
        else:  # one job on each GPU index the timed runs use
            (work / "warmup.jsonl").write_text("".join(line + "\n" for line in rows[:top]))
            inference([*common, f"--batch_file={work / 'warmup.jsonl'}", f"--output_dir={work / 'warmup'}"], gpus=top)
        warm.parent.mkdir(parents=True, exist_ok=True)
        warm.touch()
    fields = dict(jobs=case["jobs"], audio_s=case["seconds"], size=f"{case['height']}x{case['width']}", steps=case["steps"], tiny=args.tiny)
    fields["dit"] = "eager" if args.eager or args.tiny else "compiled"
    totals, per_hour = {}, {}
    for variant in variants:
        if variant == "separate":
            totals[variant] = sum(
                inference([*common, f"--validation_reference_path={row['reference']}", f"--validation_driven_audio_path={work / row['audio']}",
                           f"--validation_prompts={row['prompt']}", f"--output_dir={work / 'separate' / row['output_name']}"])
                for row in map(json.loads, jobs_file.read_text().splitlines())
            )  # fmt: skip
            record("batch_vs_separate_total", round(totals[variant], 1), "s", variant=variant, **fields)
        elif variant == "batch":
            for gpus in gpu_counts:
                out = work / ("batch" if gpus == 1 else f"batch-{gpus}gpu")
                seconds = inference([*common, f"--batch_file={jobs_file}", f"--output_dir={out}"], gpus=gpus)
                rates = job_rates(out / "results.jsonl", case["jobs"], seconds)
                if gpus == 1:
                    totals[variant] = seconds
                    record("batch_vs_separate_total", round(seconds, 1), "s", variant=variant, **fields, job_seconds=rates["job_seconds"])
                per_hour[gpus] = (rates["jobs_per_hour"], rates["jobs_per_hour_excl_load"])
                record("batch_jobs_per_hour", rates.pop("jobs_per_hour"), "jobs/h", gpus=gpus, **fields, total_s=round(seconds, 1), **rates)
        else:
            raise SystemExit(f"--variants: unknown {variant!r} (separate, batch)")
    if len(totals) == 2:
        saved = totals["separate"] - totals["batch"]
        record("batch_vs_separate_saved", round(saved, 1), "s", speedup=round(totals["separate"] / totals["batch"], 2), **fields)
    for gpus, (rate, rate_excl) in per_hour.items():
        if gpus > 1 and 1 in per_hour:
            record("batch_multi_gpu_speedup", round(rate / per_hour[1][0], 2), "x", gpus=gpus, **fields,
                   speedup_excl_load=round(rate_excl / per_hour[1][1], 2))  # fmt: skip


if __name__ == "__main__":
    main()
