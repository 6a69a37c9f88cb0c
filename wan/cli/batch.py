"""``inference.py --batch_file jobs.jsonl``: many videos, the models loaded once per process.

One process (one GPU)::

    python inference.py --batch_file jobs.jsonl --output_dir out --pretrained_model_name_or_path ... (every other flag as usual)

All GPUs of a node, or of several nodes (``batch_inference.sh`` has both launch lines)::

    torchrun --nproc_per_node 8 inference.py --batch_file jobs.jsonl ...
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 --rdzv_id avatars inference.py --batch_file jobs.jsonl ...

How it works, top to bottom (``run_batch``):

1. ``read_jobs``: every line of the file becomes a ``Job``: the global flags with the line's fields
   on top. Each job is checked with ``validation.validate`` before any model loads; every problem is
   printed at once with its line number, and the batch goes on with the good jobs.
2. ``shard``: the ranks form groups of ``--gpus_per_job`` consecutive ranks (default ulysses x
   ring: one GPU per video). The jobs go to the groups longest first, each to the group with the
   least work so far (audio seconds x pixels x steps). Every rank computes the same split from the
   files alone: no message is needed.
3. Each group loads the pipeline once and makes its videos in turn (``generation.generate``, the
   single-video path): ``<output_dir>/<output_name>.mp4``, written atomically. A video that exists
   complete is skipped; a job that fails (unreadable input, bad size, out of memory) is recorded
   with its reason and the next one starts. With ``--save_every`` each job saves its latents to
   ``<output_dir>/<output_name>.resume_state.safetensors``: ``--resume`` continues an interrupted job.
4. Each group posts its results to torchrun's rendezvous store; rank 0 counts them for the
   progress bar and writes ``<output_dir>/results.jsonl`` (one line per job, in file order). The exit
   status is 1 if any job failed (only rank 0 exits non-zero, so torchrun never stops a rank that
   is still working).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wan.cli import generation, validation
from wan.cli.args import DEFAULT_CONFIG, InferenceArgumentError

logger = logging.getLogger("wan.batch")

RESULTS_FILE = "results.jsonl"
STATE_SUFFIX = ".resume_state.safetensors"

# A line's fields: short name or the original flag name -> (the flag it sets, its type).
JOB_FIELDS: dict[str, tuple[str, type]] = {
    "reference": ("validation_reference_path", str),
    "audio": ("validation_driven_audio_path", str),
    "prompt": ("prompt", str),
    "seed": ("seed", int),
    "width": ("width", int),
    "height": ("height", int),
    "sample_steps": ("sample_steps", int),
    "text_guide_scale": ("sample_text_guide_scale", float),
    "audio_guide_scale": ("sample_audio_guide_scale", float),
    "sample_solver": ("sample_solver", str),
    "sample_shift": ("sample_shift", float),
}
JOB_FIELDS.update({flag: (flag, kind) for flag, kind in list(JOB_FIELDS.values()) if flag != "prompt"})
JOB_FIELDS["validation_prompts"] = ("prompt", str)
PATH_FIELDS = ("validation_reference_path", "validation_driven_audio_path")


@dataclass
class Job:
    """One line of the batch file."""

    line: int  # line number in the file (csv: the header is line 1)
    name: str  # output_name: the video is <output_dir>/<name>.mp4
    args: argparse.Namespace | None  # the run's flags: the global ones with the line's fields on top
    error: str | None = None  # why the job cannot run (set before any model loads)
    cost: float = 0.0  # audio seconds x pixels x steps: the order and the split of the work


@dataclass
class Result:
    """One line of results.jsonl."""

    name: str
    line: int
    status: str  # "done", "skipped" (the video existed complete) or "failed"
    seconds: float = 0.0
    frames: int | None = None
    error: str | None = None
    rank: int | None = None  # the writing rank of the group that made it


# ---------------------------------------------------------------------------------------------
# 1. The batch file -> validated jobs
# ---------------------------------------------------------------------------------------------


def _rows(path: Path) -> list[tuple[int, dict | str]]:
    """(line number, fields) for every job line; (line number, message) for a line that cannot be read.
    Blank lines (and, in .jsonl, lines starting with #) are skipped."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = []
            for row in reader:
                extra = row.pop(None, None)
                fields = {k.strip(): v.strip() for k, v in row.items() if k and v is not None and v.strip()}
                if extra:
                    rows.append((reader.line_num, f"{len(extra)} more value(s) than the header has columns"))
                elif fields:
                    rows.append((reader.line_num, fields))
            return rows
    if suffix != ".jsonl":
        raise InferenceArgumentError(f"--batch_file {path}: use a .jsonl (one JSON object per line) or a .csv with a header row")
    rows = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as err:
            rows.append((number, f"not valid JSON ({err.msg} at column {err.colno})"))
            continue
        rows.append((number, fields) if isinstance(fields, dict) else (number, "a line must be a JSON object {...}"))
    return rows


def _job_args(args: argparse.Namespace, fields: dict, folder: Path) -> argparse.Namespace:
    """The global flags with ``fields`` on top. Raises ValueError on a bad field."""
    job = copy.copy(args)
    unknown = sorted(set(fields) - set(JOB_FIELDS) - {"output_name"})
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; a line may set {', '.join(sorted({*JOB_FIELDS, 'output_name'}))}")
    for key, value in fields.items():
        if key == "output_name":
            continue
        dest, kind = JOB_FIELDS[key]
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}={value!r} is not {'an' if kind is int else 'a'} {kind.__name__}") from None
        if dest in PATH_FIELDS:
            value = str(folder / Path(value).expanduser())  # relative paths are relative to the batch file
        setattr(job, dest, value)
    return job


def _output_name(fields: dict, job: argparse.Namespace) -> str:
    """The line's ``output_name`` (default: the audio file's name without its suffix)."""
    name = str(fields.get("output_name") or Path(job.validation_driven_audio_path).stem).removesuffix(".mp4")
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise ValueError(f"output_name {name!r} must be a plain file name (no folders, not starting with '.')")
    return name


def audio_seconds(path: str) -> float:
    """Length of an audio file from its container (no decoding unless the container does not say)."""
    import av

    with av.open(path) as container:
        if container.duration:
            return container.duration / av.time_base
        stream = container.streams.audio[0]
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        return sum(frame.samples for frame in container.decode(stream)) / stream.rate


def read_jobs(args: argparse.Namespace) -> list[Job]:
    """Every job of ``args.batch_file``, each validated with ``validation.validate`` (no model is loaded).

    Raises ``InferenceArgumentError`` when the file itself cannot be used; a bad line is a job with
    ``error`` set."""
    path = Path(args.batch_file)
    if not path.is_file():
        raise InferenceArgumentError(f"--batch_file: {path} not found")
    jobs: list[Job] = []
    for number, fields in _rows(path):
        if isinstance(fields, str):
            jobs.append(Job(number, f"line{number}", None, fields))
            continue
        try:
            job_args = _job_args(args, fields, path.parent)
            validation.validate(job_args, check_checkpoints=False)
            name = _output_name(fields, job_args)
            seconds = audio_seconds(job_args.validation_driven_audio_path)
        except (ValueError, OSError) as err:  # InferenceArgumentError is a ValueError; av errors are OSErrors
            jobs.append(Job(number, str(fields.get("output_name") or f"line{number}"), None, str(err)))
            continue
        jobs.append(Job(number, name, job_args, cost=seconds * job_args.width * job_args.height * job_args.sample_steps))
    if not jobs:
        raise InferenceArgumentError(f"--batch_file {path} holds no jobs")
    lines: dict[str, list[int]] = {}
    for job in jobs:
        if job.error is None:
            lines.setdefault(job.name, []).append(job.line)
    for name, numbers in lines.items():
        for job in jobs:
            if len(numbers) > 1 and job.name == name and job.error is None:
                job.error = f"output_name {name!r} is used by lines {', '.join(map(str, numbers))}: give each line its own output_name"
    return jobs


def validate_batch(args: argparse.Namespace) -> list[Job]:
    """The global checks (flags that only make sense for one video, the process layout, the weight
    files: once, not per job), then the jobs. Raises ``InferenceArgumentError``."""
    if args.save_intermediate:
        raise InferenceArgumentError("--save_intermediate writes fixed file names, one video per folder: not with --batch_file")
    degree = args.ulysses_degree * args.ring_degree
    per_job = args.gpus_per_job or degree
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if per_job < 1 or per_job % degree or world % per_job:
        raise InferenceArgumentError(
            f"--gpus_per_job={per_job} must be a multiple of --ulysses_degree x --ring_degree = {degree} and divide the "
            f"{world} process(es) torchrun started (e.g. torchrun --nproc_per_node={max(per_job, degree)})"
        )
    if not args.output_dir:
        raise InferenceArgumentError("--output_dir is required: the folder that receives the videos and results.jsonl")
    jobs = read_jobs(args)
    from wan.models.loading import CheckpointError
    from wan.pipelines.loading import checked_checkpoints

    if args.config_path is None:
        args.config_path = str(DEFAULT_CONFIG)
    try:
        checked_checkpoints(args.pretrained_model_name_or_path, args.transformer_path, args.pretrained_wav2vec_path, args.config_path)
    except (CheckpointError, OSError, ValueError) as err:
        raise InferenceArgumentError(str(err)) from None
    return jobs


def error_report(jobs: Sequence[Job], batch_file: str) -> str:
    """The jobs that cannot run, one message per problem with every line that has it."""
    by_error: dict[str, list[int]] = {}
    for job in jobs:
        if job.error is not None:
            by_error.setdefault(job.error, []).append(job.line)
    return "\n".join(f"{batch_file} line{'s' if len(n) > 1 else ''} {', '.join(map(str, n))}: {e}" for e, n in by_error.items())


# ---------------------------------------------------------------------------------------------
# 2. Sharing out
# ---------------------------------------------------------------------------------------------


def shard(jobs: Sequence[Job], num_groups: int) -> list[list[Job]]:
    """The runnable jobs dealt to ``num_groups`` groups: longest first, each to the group with the
    least work so far (ties: the lower group). Deterministic: every rank gets the same answer."""
    loads, shares = [0.0] * num_groups, [[] for _ in range(num_groups)]
    for job in sorted((j for j in jobs if j.error is None), key=lambda j: (-j.cost, j.line)):
        group = min(range(num_groups), key=lambda g: (loads[g], g))
        shares[group].append(job)
        loads[group] += job.cost
    return shares


# ---------------------------------------------------------------------------------------------
# 3. Making the videos
# ---------------------------------------------------------------------------------------------


def complete_video(path: Path) -> int | None:
    """Frames of ``path`` if it is a readable mp4 with a video stream (it was renamed into place only
    when complete), else None."""
    import av

    if not path.is_file():
        return None
    try:
        with av.open(str(path)) as container:
            return container.streams.video[0].frames or None
    except (OSError, IndexError, ValueError):
        return None


def run_job(pipe, job: Job, out_dir: Path, writer: bool, rank: int) -> Result:
    """Make one video (or skip it when it exists); every failure becomes a failed ``Result``."""
    from wan.runtime.memory import GPUOutOfMemoryError
    from wan.runtime.resume import ResumeMismatchError

    video = out_dir / f"{job.name}.mp4"
    frames = complete_video(video)
    if frames:
        logger.info("%s exists (%d frames): skipped", video, frames)
        return Result(job.name, job.line, "skipped", frames=frames, rank=rank)
    start = time.perf_counter()
    state = out_dir / f"{job.name}{STATE_SUFFIX}"
    args = copy.copy(job.args)
    args.resume = args.resume and state.is_file()  # --resume continues the jobs that were interrupted, quietly starts the rest
    try:
        resume = generation.resume_point(args, state, writer)
        if writer:
            pipe.set_progress_bar_config(desc=job.name)
        written = generation.generate(pipe, args, video, resume, writer)
    except Exception as err:  # noqa: BLE001 - one bad job must not end the batch
        if not isinstance(err, (GPUOutOfMemoryError, ResumeMismatchError)):  # the message says it all for these two
            logger.error("%s (line %d) failed:\n%s", job.name, job.line, traceback.format_exc())
        _free_gpu_memory()
        return Result(job.name, job.line, "failed", time.perf_counter() - start, error=f"{type(err).__name__}: {err}", rank=rank)
    return Result(job.name, job.line, "done", time.perf_counter() - start, None if written is None else written.num_frames, rank=rank)


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# 4. Results across ranks: torchrun's rendezvous store
# ---------------------------------------------------------------------------------------------


class Board:
    """Counts finished jobs and collects each group's results: in torchrun's rendezvous store when
    several processes run (no collective, so ranks that finish early never time out), else in memory."""

    def __init__(self, num_groups: int):
        import torch.distributed as dist

        self.num_groups = num_groups
        self.store = None
        if dist.is_initialized():
            # The store torch.distributed already joined; keys scoped to this launch (and restart).
            prefix = f"wan_batch/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
            self.store = dist.PrefixStore(prefix, dist.distributed_c10d._get_default_store())
        self._done, self._results = 0, {}

    def job_finished(self) -> None:
        if self.store is not None:
            self.store.add("done", 1)
        else:
            self._done += 1

    def done(self) -> int:
        return self.store.add("done", 0) if self.store is not None else self._done

    def post(self, group: int, results: list[Result]) -> None:
        payload = json.dumps([r.__dict__ for r in results])
        if self.store is not None:
            self.store.set(f"results/{group}", payload)
            self.store.add("groups_done", 1)
        else:
            self._results[group] = payload

    def collect(self, wait: Callable[[], None]) -> list[Result]:
        """Every group's results, once all have posted (``wait`` runs between polls)."""
        if self.store is not None:
            while self.store.add("groups_done", 0) < self.num_groups:
                wait()
            payloads = [self.store.get(f"results/{g}").decode() for g in range(self.num_groups)]
        else:
            payloads = [self._results[g] for g in range(self.num_groups)]
        return [Result(**row) for payload in payloads for row in json.loads(payload)]


class Progress:
    """Rank 0's bar over the whole batch (jobs done / total, ETA), fed from the ``Board`` by a thread."""

    def __init__(self, board: Board, total: int, already: int, enabled: bool):
        from tqdm.auto import tqdm

        self.board, self.already = board, already
        self.bar = tqdm(total=total, initial=already, unit="job", desc="batch", disable=not enabled, dynamic_ncols=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True) if enabled and board.store is not None else None
        if self._thread is not None:
            self._thread.start()

    def refresh(self) -> None:
        done = self.already + self.board.done()
        if done != self.bar.n:
            self.bar.update(done - self.bar.n)

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            self.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.refresh()
        self.bar.close()


def write_results(path: Path, results: list[Result]) -> None:
    """results.jsonl in file order, written atomically."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(r.__dict__) + "\n" for r in sorted(results, key=lambda r: r.line)))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------


def run_batch(args: argparse.Namespace) -> int:
    """``inference.py --batch_file``: returns the exit status (0 all done, 1 a job failed, 2 bad flags)."""
    rank = int(os.environ.get("RANK", "0"))
    try:
        jobs = validate_batch(args)
    except InferenceArgumentError as err:
        print(f"inference.py: error: {err}", file=sys.stderr)
        return 2
    bad = [j for j in jobs if j.error is not None]
    if rank == 0 and bad:
        print(f"inference.py: {len(bad)} of {len(jobs)} jobs cannot run:\n{error_report(bad, args.batch_file)}", file=sys.stderr)
    if len(bad) == len(jobs):
        return 2

    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_job = args.gpus_per_job or args.ulysses_degree * args.ring_degree
    group, num_groups = rank // per_job, world // per_job
    mine = shard(jobs, num_groups)[group]
    writer = rank % per_job == 0
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        logger.info("%d jobs (%d runnable) over %d group(s) of %d process(es)", len(jobs), len(jobs) - len(bad), num_groups, per_job)

    pipe = generation.load(args, ranks_per_job=per_job)
    board = Board(num_groups)
    progress = Progress(board, total=len(jobs), already=len(bad), enabled=rank == 0)
    results = []
    try:
        for job in mine:
            results.append(run_job(pipe, job, out_dir, writer, rank))
            if writer:
                board.job_finished()
                r = results[-1]
                logger.info("%s: %s%s", r.name, r.status, f" ({r.error})" if r.error else f" in {r.seconds:.1f} s")
            if board.store is None:
                progress.refresh()
        if writer:
            board.post(group, results)
        if rank != 0:
            return 0  # only rank 0 reports: a non-zero exit here would make torchrun stop the others
        results = board.collect(wait=lambda: time.sleep(1.0))
    finally:
        progress.close()
    results += [Result(j.name, j.line, "failed", error=j.error) for j in bad]
    write_results(out_dir / RESULTS_FILE, results)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    print(
        f"inference.py: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed: {out_dir / RESULTS_FILE}",
        file=sys.stderr,
    )
    return 1 if counts["failed"] else 0
