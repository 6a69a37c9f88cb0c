"""Benchmarks write their numbers as data: one JSON line per measurement in bench/results/<device>.jsonl."""

from __future__ import annotations

import json

from bench import common


def test_record_appends_a_complete_line(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("BENCH_COMMIT", "abc1234")
    common.record("dit_step_s", 1.25, "s", size="480x832x81", variant="faithful")
    common.emit(bench="vae_decode", median_s=2.0)
    path = tmp_path / f"{common.device_slug()}.jsonl"
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    for key in ("metric", "value", "unit", "device", "versions", "commit", "date", "command"):
        assert key in first, key
    assert (first["metric"], first["value"], first["unit"], first["variant"], first["commit"]) == ("dit_step_s", 1.25, "s", "faithful", "abc1234")
    assert first["versions"]["torch"]
    assert (second["metric"], second["median_s"]) == ("vae_decode", 2.0)


def test_device_slug():
    assert common.device_slug("NVIDIA H200") == "nvidia-h200"
    assert common.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert common.device_slug("CPU (x86_64, 2 threads)") == "cpu"
