"""inference.py with x264's macroblock tree off, for tests that compare decoded frames exactly.

libx264 (mb-tree rate control with its asm kernels) does not always encode identical frames
identically: on the CI machine 1-2 frames of a 49-frame tiny video come out different in about one
run in three. With ``mbtree=0`` the encoding is reproducible. Run as a script, also under torchrun:
``torchrun ... tests/deterministic_inference.py <inference.py flags>``.
"""

from __future__ import annotations

import sys
from pathlib import Path


def make_x264_deterministic() -> None:
    from wan.utils import video_io

    add_video = video_io._Output.add_video
    if getattr(add_video, "deterministic", False):
        return

    def deterministic(self, *args, **kwargs):
        add_video(self, *args, **kwargs)
        self.video.codec_context.options = {**self.video.codec_context.options, "x264-params": "mbtree=0"}

    deterministic.deterministic = True
    video_io._Output.add_video = deterministic


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    make_x264_deterministic()
    from wan.cli.inference import main

    sys.exit(main())
