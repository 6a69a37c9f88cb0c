"""One GPU, several videos: ``inference.py --batch_file`` (models loaded once) against one
``inference.py`` run per video (models loaded every time).

    python bench/batch.py                       # GPU: 4 jobs of 5 s at 480x832, 2 steps, full-size random weights
    python bench/batch.py --ckpt_dir /tmp/rnd --variants ""         # write the checkpoints, fill the compile cache
    python bench/batch.py --ckpt_dir /tmp/rnd --variants separate   # then one variant per call (each under 10 minutes)
    python bench/batch.py --tiny                # CPU check of the script: tiny checkpoints, 64x64, 1-s jobs

Both variants run ``inference.py`` as a user does, in fresh processes, so each time covers Python
start-up, imports, reading every weight file, the jobs, and writing the mp4s. The weights are the
full-size models of ``wan.testing.random_models`` written once in the release layout to
``--ckpt_dir`` (about 20 GB; reused when present), so reading them costs what reading the release
costs from the same disk; after the first read they come from the page cache, for both variants
alike. The audio is four different 5-s cuts of examples/case-2's speech, the references are
examples/case-1..4. The DiT runs as inference.py's default (compiled on one GPU, persistent compile
cache in ``--ckpt_dir``); one untimed job fills that cache first, so that neither variant pays the
one-off compilation. ``--eager`` times the eager DiT instead. Recorded (``bench.common.record``):
``batch_vs_separate_total`` per variant, and, when both ran in one call, ``batch_vs_separate_saved``
(seconds saved by loading once).
"""

from __future__ import annotations

import argparse
import json
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


def inference(flags: list[str]) -> float:
    """Wall seconds of one ``inference.py`` process; its output is shown, a failure stops the bench."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "inference.py"), *flags], cwd=REPO, check=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny checkpoints on the CPU (checks the script, not a measurement)")
    p.add_argument("--variants", default="separate,batch", help="comma list of separate, batch")
    p.add_argument("--ckpt_dir", default=None, help="folder for the random full-size checkpoints (default: a temporary folder)")
    p.add_argument("--eager", action="store_true", help="inference.py --eager (no torch.compile) in both variants")
    args = p.parse_args()
    case = TINY if args.tiny else FULL
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
    if not args.tiny and not args.eager and not (ckpt_dir / "compile_cache").is_dir():  # fill it (untimed), as earlier runs would have
        row = json.loads(jobs_file.read_text().splitlines()[0])
        inference([*common, f"--validation_reference_path={row['reference']}", f"--validation_driven_audio_path={work / row['audio']}",
                   f"--output_dir={work / 'warmup'}"])  # fmt: skip
    fields = dict(jobs=case["jobs"], audio_s=case["seconds"], size=f"{case['height']}x{case['width']}", steps=case["steps"], tiny=args.tiny)
    fields["dit"] = "eager" if args.eager or args.tiny else "compiled"
    totals = {}
    for variant in filter(None, args.variants.split(",")):
        extra = {}
        if variant == "separate":
            totals[variant] = sum(
                inference([*common, f"--validation_reference_path={row['reference']}", f"--validation_driven_audio_path={work / row['audio']}",
                           f"--validation_prompts={row['prompt']}", f"--output_dir={work / 'separate' / row['output_name']}"])
                for row in map(json.loads, jobs_file.read_text().splitlines())
            )  # fmt: skip
        elif variant == "batch":
            totals[variant] = inference([*common, f"--batch_file={jobs_file}", f"--output_dir={work / 'batch'}"])
            extra["job_seconds"] = [
                round(json.loads(line)["seconds"], 1) for line in (work / "batch" / "results.jsonl").read_text().splitlines()
            ]
        else:
            raise SystemExit(f"--variants: unknown {variant!r} (separate, batch)")
        record("batch_vs_separate_total", round(totals[variant], 1), "s", variant=variant, **fields, **extra)
    if len(totals) == 2:
        saved = totals["separate"] - totals["batch"]
        record("batch_vs_separate_saved", round(saved, 1), "s", speedup=round(totals["separate"] / totals["batch"], 2), **fields)


if __name__ == "__main__":
    main()
