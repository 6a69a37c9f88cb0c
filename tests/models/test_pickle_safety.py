"""Weight files are never unpickled as code: a .pt whose pickle would run a command is refused, and the command
does not run (``torch.load(weights_only=True)`` in ``wan.models.loading``)."""

from __future__ import annotations

import builtins

import pytest
import torch

from wan.errors import CheckpointError
from wan.models.loading import load_state_dict_file


class RunsCode:
    """Unpickling this calls ``exec`` on a line that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('the pickle ran code')",)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_that_runs_code_is_refused_and_the_code_does_not_run(tmp_path, zip_format):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "transformer3d-square.pt"
    torch.save({"blocks.0.weight": torch.zeros(2), "payload": RunsCode(marker)}, path, _use_new_zipfile_serialization=zip_format)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="transformer3d-square.pt"):
        load_state_dict_file(path)
    assert not marker.exists(), "loading a weight file ran code from its pickle"


def test_plain_tensor_checkpoints_still_load(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {"a": torch.arange(3.0)}}, path)
    assert torch.equal(load_state_dict_file(path)["a"], torch.arange(3.0))


def test_every_torch_load_in_the_package_passes_weights_only_true():
    """The behaviour above is tested on ``load_state_dict_file``; any other ``torch.load`` must refuse code too."""
    import ast
    from pathlib import Path

    unsafe = []
    for path in sorted((Path(__file__).resolve().parents[2] / "wan").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    unsafe.append(f"{path.name}:{node.lineno}")
    assert unsafe == [], f"torch.load without weights_only=True: {unsafe}"
