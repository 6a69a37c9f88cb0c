import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Two 12-frame clips (one "speech", one "singing") at 32x32 and their list file."""
    import tiny

    root = tmp_path_factory.mktemp("talking_face_data")
    return tiny.make_dataset(root, clips=2, frames=12)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each trainer builds its own Accelerator; accelerate keeps process-wide singletons."""
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
