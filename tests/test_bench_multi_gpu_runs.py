"""The pure parts of the runbook's train and batch stages: bench/train_step.py's DeepSpeed JSON
filling and bench/batch.py's jobs-per-hour figures (the runs themselves need GPUs)."""

from __future__ import annotations

import json

import pytest

from bench.batch import job_rates
from bench.train_step import _walk, fill_deepspeed_config, offload_of
from tests.conftest import REPO

SHIPPED = sorted((REPO / "deepspeed_config").glob("*.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_auto_of_the_shipped_jsons_is_filled(path):
    shipped = json.loads(path.read_text())
    ds = fill_deepspeed_config(shipped, world=4, bf16=True, torch_adam=False)
    assert "auto" not in [v for _, v in _walk(ds)]
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (1, 1, 4)
    assert ds["bf16"]["enabled"] is True and ds["optimizer"] == shipped["optimizer"]  # the JSON's own Adam


def test_the_cpu_check_turns_bf16_off_and_takes_torch_adam():
    shipped = json.loads((REPO / "deepspeed_config" / "zero_stage3_config.json").read_text())
    ds = fill_deepspeed_config(shipped, world=2, bf16=False, torch_adam=True)
    assert ds["bf16"]["enabled"] is False and ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["zero_force_ds_cpu_optimizer"] is False  # offload would refuse torch's AdamW
    assert offload_of(ds) == "optimizer:cpu,param:cpu" and offload_of({"zero_optimization": {"stage": 2}}) is None
    assert "torch_adam" not in shipped["optimizer"]["params"]  # the caller's dict is left as it was


def test_an_auto_without_a_rule_is_named():
    with pytest.raises(SystemExit, match="zero_optimization.reduce_bucket_size"):
        fill_deepspeed_config({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}, 2, True, False)


def test_jobs_per_hour_with_and_without_the_loading(tmp_path):
    results = tmp_path / "results.jsonl"
    rows = [(0, 10.0), (1, 12.0), (0, 11.0), (1, 9.0)]  # (rank, job seconds)
    results.write_text("".join(json.dumps({"name": f"job{i}", "status": "done", "seconds": s, "rank": r}) + "\n" for i, (r, s) in enumerate(rows)))
    rates = job_rates(results, jobs=4, seconds=60.0)
    assert rates["jobs_per_hour"] == 240.0  # 4 jobs in the 60 s from launch to the last mp4
    assert rates["jobs_per_hour_excl_load"] == round(4 * 3600 / 21.0, 1)  # the busier GPU: 10 + 11 s
    assert (rates["job_seconds"], rates["job_ranks"]) == ([10.0, 12.0, 11.0, 9.0], [0, 1, 0, 1])
