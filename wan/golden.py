"""Run a golden case directory and write its outputs.

    python -m wan.golden CASE_DIR OUT.safetensors [--check]

A case directory (format of ``tests/data/cases/*``) holds ``case.json``, ``inputs.safetensors`` and
the reference ``outputs.safetensors`` recorded from the original StableAvatar code on recipe weights
(``wan.testing.recipe``). This runner builds our module from ``case.json["constructor"]``, fills it
with the recipe, makes the recorded call and writes every output it computes under the case's
output key names. Dispatch is on ``case.json["component"]`` (the original class name), never on
the folder name. ``--check`` also compares with the stored outputs at the case's tolerances.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# Original class name (first word of case.json["component"]) -> "module:function" of its runner.
# A runner takes a GoldenCase and returns {output_key: tensor}.
RUNNERS: dict[str, str] = {
    "WanTransformer3DFantasyModel": "wan.testing.golden_dit:run_dit",
    "WanTransformer3DFantasy14BModel": "wan.testing.golden_dit:run_dit",
    "FantasyTalkingVocalCondition1BModel": "wan.testing.golden_dit:run_audio_adapter",
    "AutoencoderKLWan": "wan.testing.golden_vae:run_vae",
    "WanT5EncoderModel": "wan.testing.golden_encoders:run_t5",
    "CLIPModel": "wan.testing.golden_encoders:run_clip",
    "WanI2VTalkingInferenceLongPipeline": "wan.testing.golden_pipeline:run_pipeline",
}


@dataclass
class GoldenCase:
    """One case directory, loaded: metadata, inputs (float inputs already cast to float32)."""

    path: Path
    meta: dict
    inputs: dict[str, torch.Tensor]

    @classmethod
    def load(cls, path: str | os.PathLike) -> GoldenCase:
        path = Path(path)
        meta_file = path / "case.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} not found: a golden case directory holds case.json, inputs.safetensors")
        meta = json.loads(meta_file.read_text())
        inputs = load_file(str(path / "inputs.safetensors"))
        inputs = {k: (v.float() if v.is_floating_point() else v) for k, v in inputs.items()}
        return cls(path=path, meta=meta, inputs=inputs)

    @property
    def component(self) -> str:
        return self.meta["component"].split()[0]

    def reference(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "outputs.safetensors"))

    def call_kwargs(self) -> dict:
        """Resolve ``case.json["call"]["kwargs"]`` into Python values ({tensor|value|list_of_tensors})."""
        kwargs = {}
        for name, spec in self.meta["call"]["kwargs"].items():
            if "tensor" in spec:
                kwargs[name] = self.inputs[spec["tensor"]]
            elif "list_of_tensors" in spec:
                kwargs[name] = [self.inputs[t] for t in spec["list_of_tensors"]]
            else:
                kwargs[name] = spec["value"]
        return kwargs


def runner_for(case: GoldenCase) -> Callable[[GoldenCase], dict[str, torch.Tensor]]:
    target = RUNNERS.get(case.component)
    if target is None:
        raise ValueError(f"{case.path}/case.json: no runner for component {case.component!r}; known: {sorted(RUNNERS)}")
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def run_case(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Run the case in ``path`` on CPU in float32 and return its outputs."""
    case = GoldenCase.load(path)
    with torch.no_grad():
        outputs = runner_for(case)(case)
    return {k: v.detach().cpu().contiguous() for k, v in outputs.items()}


def compare(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], tolerances: dict) -> list[str]:
    """Check every toleranced key; return one line per failure (empty list: all pass).

    A key with a numeric tolerance must be in the reference and in ``got``; a missing one is a failure,
    never a silent pass. Prose entries (a string instead of a tolerance dict) are notes and are skipped.
    """
    failures = []
    for key, tol in tolerances.items():
        if not isinstance(tol, dict):
            continue  # prose entries such as "per-window intermediates"
        if key not in ref:
            failures.append(f"{key}: has a tolerance but the reference holds no recorded value")
            continue
        if key not in got:
            failures.append(f"{key}: not produced")
            continue
        a, b = got[key], ref[key]
        if tuple(a.shape) != tuple(b.shape):
            failures.append(f"{key}: shape {tuple(a.shape)} != reference {tuple(b.shape)}")
            continue
        if tol.get("exact"):
            if not torch.equal(a.to(b.dtype), b):
                failures.append(f"{key}: not bit-equal ({int((a.to(b.dtype) != b).sum())} entries differ)")
            continue
        a64, b64 = a.double(), b.double()
        max_abs = (a64 - b64).abs().max().item()
        rel_l2 = ((a64 - b64).norm() / b64.norm().clamp_min(1e-30)).item()
        if not (max_abs <= tol["max_abs"] and rel_l2 <= tol["rel_l2"]):
            failures.append(f"{key}: max_abs {max_abs:.3g} (tol {tol['max_abs']:.3g}), rel_l2 {rel_l2:.3g} (tol {tol['rel_l2']:.3g})")
    return failures


def check_case(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Run a case and compare it with its stored outputs at its tolerances."""
    got = run_case(path)
    case = GoldenCase.load(path)
    return got, compare(got, case.reference(), case.meta.get("tolerances", {}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wan.golden", description=__doc__.split("\n\n")[0])
    parser.add_argument("case_dir", help="golden case directory (case.json, inputs.safetensors)")
    parser.add_argument("out", help="where to write the computed outputs (.safetensors)")
    parser.add_argument("--check", action="store_true", help="compare with the case's outputs.safetensors")
    args = parser.parse_args(argv)
    got = run_case(args.case_dir)
    tmp = f"{args.out}.tmp"
    save_file(got, tmp)
    os.replace(tmp, args.out)
    print(f"wrote {len(got)} outputs to {args.out}: {', '.join(sorted(got))}")
    if args.check:
        case = GoldenCase.load(args.case_dir)
        failures = compare(got, case.reference(), case.meta.get("tolerances", {}))
        for line in failures:
            print("FAIL", line)
        print("golden check:", "FAILED" if failures else "passed")
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
