"""Code run inside the process groups of tests/distributed: each scenario writes its numbers to a JSON
file per rank; the test process asserts on them. Started with ``torch.multiprocessing.spawn``
(``launch``: 2-4 CPU processes over gloo, the parallel result compared on the same rank), or
under ``torchrun`` (``torchrun``: one process per GPU with NCCL, or CPU processes over gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenario: str, out_dir: Path, world: int = 2, **kwargs) -> list[dict]:
    """Run ``scenario`` on ``world`` CPU processes; returns every rank's report."""
    import torch.multiprocessing as mp

    port = free_port()
    mp.spawn(_entry, args=(world, port, scenario, str(out_dir), kwargs), nprocs=world, join=True)
    return [json.loads((out_dir / f"{scenario}-{r}.json").read_text()) for r in range(world)]


def _entry(rank: int, world: int, port: int, scenario: str, out_dir: str, kwargs: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    report: dict = {}
    try:
        report = SCENARIOS[scenario](**kwargs)
    except Exception:
        report = {"error": traceback.format_exc()}
        raise
    finally:
        Path(out_dir, f"{scenario}-{rank}.json").write_text(json.dumps(report))
        if dist.is_initialized():
            dist.destroy_process_group()


def count_usp_calls() -> list[int]:
    """Count the sequence-parallel attention calls from now on (proof that it ran): ``[n]``."""
    from wan.models import attention

    calls = [0]
    if "usp" in attention._EXTRA:
        usp = attention._EXTRA["usp"]
        attention._EXTRA["usp"] = lambda *a, **k: (calls.__setitem__(0, calls[0] + 1), usp(*a, **k))[1]
    return calls


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.double(), b.double()
    return {"max_abs": (a - b).abs().max().item(), "rel_l2": ((a - b).norm() / b.norm().clamp_min(1e-30)).item(), "shape": list(a.shape)}


# ------------------------------------------------------------------------------- the DiT alone


def dit_sequence_parallel() -> dict:
    """Ulysses x2 (yunchang, math kernel) against the same model on one process."""
    from tests.models.test_transformer import tiny_config, tiny_inputs
    from wan.distributed.runtime import setup_parallel
    from wan.distributed.sequence_parallel import disable_sequence_parallel
    from wan.models.transformer import WanAvatarTransformer3DModel

    torch.manual_seed(0)
    model = WanAvatarTransformer3DModel(**tiny_config()).eval()
    for block in model.blocks:  # audio attention on, so a wrong frame grouping would show
        torch.nn.init.normal_(block.cross_attn.k_vocal.weight, std=0.2)
        torch.nn.init.normal_(block.cross_attn.v_vocal.weight, std=0.2)
    report = {}
    # 5 frames of 16 tokens: the halves (40 tokens) cut frame 2 in two; 3 frames of 9 = 27 tokens
    # is odd, so one zero token pads it (the case that cannot match exactly).
    cases = {"f5": tiny_inputs(frames=5, size=8), "last_window": tiny_inputs(frames=3, size=8), "odd": tiny_inputs(frames=3, size=6)}
    cases["last_window"]["seq_len"] = 5 * 16  # a short last window: 48 real tokens padded to 80
    cases["last_window"]["video_sample_n_frames"] = 17
    with torch.no_grad():
        single = {name: model(**inp) for name, inp in cases.items()}
        single["rows"] = model(**cases["f5"], rows=[0, 2])
        runtime = setup_parallel(ulysses_degree=2, ring_degree=1, device="cpu")
        report["describe"] = runtime.describe()
        report["windows_executor"] = runtime.windows is not None
        runtime.attach(_Holder(model))
        for name, inp in cases.items():
            report[name] = _diff(model(**inp), single[name])
        report["rows"] = _diff(model(**cases["f5"], rows=[0, 2]), single["rows"])
        # Control: the original's grouping (the chunk cut into `frames` groups, quirk 10) must show.
        sp, shard = runtime.sp, runtime.sp.shard
        sp.shard = lambda x, rope, frames: (*shard(x, rope, frames)[:2], None)
        report["quirk10"] = _diff(model(**cases["f5"]), single["f5"])
        sp.shard = shard
        # FSDP of the blocks inside the sequence-parallel group (CPU mesh, gloo).
        from wan.distributed.fsdp import local_parameter_bytes, shard_dit

        full_bytes = local_parameter_bytes(model)
        shard_dit(model, runtime.sp.group, torch.device("cpu"))
        report["fsdp_bytes_ratio"] = local_parameter_bytes(model) / full_bytes
        report["fsdp"] = _diff(model(**cases["f5"]), single["f5"])
        disable_sequence_parallel(model)
        report["fsdp_no_sp"] = _diff(model(**cases["f5"]), single["f5"])
    # ring on the CPU: refused with the reason, before any collective
    from wan.distributed.sequence_parallel import setup_sequence_parallel

    try:
        setup_sequence_parallel(1, 2, torch.device("cpu"))
        report["ring_error"] = None
    except RuntimeError as err:
        report["ring_error"] = str(err)
    return report


class _Holder:
    """Stands in for a pipeline in ``ParallelRuntime.attach``."""

    def __init__(self, transformer):
        self.transformer = transformer
        self.parallel = None

    def set_progress_bar_config(self, **kwargs) -> None:
        pass


# ------------------------------------------------------------------------------- the pipeline


def pipeline_parallel(ckpt: dict, ulysses: int, seconds: float, split_rows: bool = True) -> dict:
    """The tiny pipeline under torchrun-like env: parallel run vs the same pipeline on one process."""
    import numpy as np

    from wan.audio import load_audio
    from wan.distributed.sequence_parallel import disable_sequence_parallel
    from wan.pipelines import load_pipeline

    pipe = load_pipeline(
        ckpt["pretrained_model_name_or_path"], ckpt["transformer_path"], ckpt["pretrained_wav2vec_path"], ckpt["config_path"],
        device="cpu", ulysses_degree=ulysses,
    )  # fmt: skip
    if pipe.parallel is not None:
        pipe.parallel.split_rows = split_rows
    audio = load_audio(Path(__file__).resolve().parents[2] / "examples" / "case-2" / "audio.wav")[: int(seconds * 16000)]
    reference = str(Path(__file__).resolve().parents[2] / "examples" / "case-2" / "reference.png")

    def run() -> torch.Tensor:
        kw = dict(height=32, width=32, num_inference_steps=2, clip_length=17, overlap_window_length=2, output_type="latent")
        return pipe(image=reference, audio=np.asarray(audio), generator=torch.Generator().manual_seed(0), **kw).latents

    usp_calls = count_usp_calls()
    parallel = run()
    report = {"parallel": repr(pipe.parallel), "usp_calls": usp_calls[0], "latent_frames": parallel.shape[2]}
    pipe.parallel = None
    disable_sequence_parallel(pipe.transformer)
    report["latents"] = _diff(parallel, run())
    # identical on every rank: each rank reports a checksum
    report["checksum"] = parallel.double().sum().item()
    return report


# ------------------------------------------------------------------------------- batch job groups


class _RowsPipe:
    """Stands in for the pipeline in ``WindowParallel.predict_windows``: a window's three CFG rows are
    simple functions of its latents, its position and the step; the whole window is their guidance."""

    def window_noise(self, latents, t, window, cond, rows=(0, 1, 2)):
        base = latents[0] * (window.index + 1) + t
        return torch.stack([base * (r + 1) + r for r in rows])

    def denoise_window(self, latents, t, window, cond):
        from wan.pipelines.sliding_window import combine_guidance

        return combine_guidance(self.window_noise(latents, t, window, cond), audio_scale=cond.audio_guide_scale, text_scale=cond.text_guide_scale)


def job_groups(windows: int = 3) -> dict:
    """4 processes, ``ranks_per_job=2`` (what ``--batch_file --gpus_per_job 2`` sets up): two groups of
    two ranks, each working on its own video (its own latents) with the windows dealt out inside the
    group. Every rank must get its own group's guided velocities, as one process computes them."""
    from types import SimpleNamespace

    from wan.distributed.runtime import setup_parallel
    from wan.distributed.window_parallel import schedule

    runtime = setup_parallel(ranks_per_job=2, device="cpu")
    ex = runtime.windows
    gen = torch.Generator().manual_seed(100 + runtime.job_group)  # a different video per group
    latents = torch.randn(1, 4, 2 * windows + 1, 2, 2, generator=gen)
    wins = [SimpleNamespace(index=i, latent_slice=slice(2 * i, 2 * i + 3), num_frames=3) for i in range(windows)]
    cond = SimpleNamespace(audio_guide_scale=4.0, text_guide_scale=3.0)
    pipe, t = _RowsPipe(), torch.tensor(0.5)
    got = ex.predict_windows(pipe, latents, t, wins, cond)
    want = [pipe.denoise_window(latents[:, :, w.latent_slice], t, w, cond) for w in wins]
    return {
        "describe": runtime.describe(), "ranks": ex.ranks, "job_group": runtime.job_group, "writes": runtime.writes,
        "split_rows": any(item.rows is not None for item in schedule(windows, ex.num_groups)),
        "max_abs": max((g - w).abs().max().item() for g, w in zip(got, want, strict=True)),
        "checksum": sum(g.double().sum().item() for g in got),
    }  # fmt: skip


# ------------------------------------------------------------------------------- a bench layout under torchrun


def layout_latents(layout: str, case: dict, steps: int, out: str, tiny_dir: str | None = None, preset: str = "1.3B") -> dict:
    """``steps`` denoising steps of ``case`` with ``bench/multi_gpu.py``'s ``layout`` on this torchrun's
    processes (``single`` on one); rank 0 saves the latents to ``out/<layout>.pt``."""
    from bench.multi_gpu import build_pipeline, generate

    pipe = build_pipeline(layout, preset, tiny_dir)
    usp_calls = count_usp_calls()
    result = generate(pipe, case, steps)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        torch.save(result.latents.cpu(), Path(out, f"{layout}.pt"))
    return {
        "parallel": repr(pipe.parallel), "usp_calls": usp_calls[0], "windows": len(result.windows),
        "device": str(result.latents.device), "checksum": result.latents.double().sum().item(),
    }  # fmt: skip


SCENARIOS = {
    "dit_sequence_parallel": dit_sequence_parallel,
    "pipeline_parallel": pipeline_parallel,
    "job_groups": job_groups,
    "layout_latents": layout_latents,
}


def torchrun(scenario: str, out_dir: Path, nproc: int, timeout: int = 900, **kwargs) -> list[dict]:
    """Run ``scenario(**kwargs)`` under ``torchrun --nproc_per_node nproc`` (NCCL on GPUs, else gloo);
    returns every rank's report. The NVLink-multicast switches are set in the children's environment."""
    from bench.multi_gpu import NO_MULTICAST

    env = {**NO_MULTICAST, **os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += [str(Path(__file__).resolve()), scenario, str(out_dir), json.dumps(kwargs)]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=timeout)
    reports = [Path(out_dir, f"{scenario}-{r}.json") for r in range(nproc)]
    if proc.returncode or not all(r.exists() for r in reports):
        raise AssertionError(f"torchrun {scenario} on {nproc} process(es) failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return [json.loads(r.read_text()) for r in reports]


if __name__ == "__main__":  # under torchrun: workers.py SCENARIO OUT_DIR KWARGS_JSON
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    name, folder, arguments = sys.argv[1:4]
    report: dict = {}
    try:
        report = SCENARIOS[name](**json.loads(arguments))
    except Exception:
        report = {"error": traceback.format_exc()}
        raise
    finally:
        Path(folder, f"{name}-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(report))
        if dist.is_initialized():
            dist.destroy_process_group()
