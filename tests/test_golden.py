"""wan.golden.compare: every key with a tolerance is checked; a key the reference or the run lacks fails."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from tests.conftest import CASES
from wan.golden import compare

TOL = {"max_abs": 1e-6, "rel_l2": 1e-6}


def test_a_toleranced_key_missing_from_the_reference_fails():
    got = {"latents": torch.ones(2), "videos": torch.ones(3)}
    assert compare(got, {"latents": torch.ones(2)}, {"latents": TOL, "videos": TOL}) == [
        "videos: has a tolerance but the reference holds no recorded value"
    ]


def test_a_key_the_run_does_not_produce_fails_and_prose_entries_are_notes():
    ref = {"latents": torch.ones(2)}
    assert compare({}, ref, {"latents": TOL, "intermediates": "same as latents"}) == ["latents: not produced"]
    assert compare({"latents": torch.ones(2)}, ref, {"latents": TOL, "intermediates": "same as latents"}) == []


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if (p / "case.json").is_file()))
def test_every_toleranced_output_of_a_case_is_recorded(case):
    tolerances = json.loads((CASES / case / "case.json").read_text())["tolerances"]
    with safe_open(str(CASES / case / "outputs.safetensors"), framework="pt") as f:
        recorded = set(f.keys())
    assert {k for k, v in tolerances.items() if isinstance(v, dict)} <= recorded
