"""Shared test helpers: golden cases, key maps, tiny configs, markers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
CASES = DATA / "cases"
KEYS = DATA / "keys"
REPO = Path(__file__).parent.parent
EXAMPLES = REPO / "examples"

torch.set_num_threads(2)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped on CPU machines)")
    config.addinivalue_line("markers", "weights: needs the real released checkpoints (skipped without them)")
    config.addinivalue_line("markers", "slow: takes more than ~30 s on the 2-core CI machine")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; run on the GPU machine")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def key_map(name: str) -> dict[str, list]:
    """{state_dict key: [shape, dtype]} of a released model (tests/data/keys/<name>.json)."""
    return json.loads((KEYS / f"{name}.json").read_text())


def assert_golden(case_name: str, only: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Run golden case ``case_name`` through ``python -m wan.golden``'s runner and check every
    toleranced output (or only the keys in ``only``). Returns the computed outputs."""
    from wan.golden import GoldenCase, compare, run_case

    path = CASES / case_name
    got = run_case(path)
    case = GoldenCase.load(path)
    tolerances = case.meta["tolerances"]
    if only is not None:
        tolerances = {k: v for k, v in tolerances.items() if k in only}
    failures = compare(got, case.reference(), tolerances)
    assert not failures, f"golden case {case_name} differs from the original:\n" + "\n".join(failures)
    return got
