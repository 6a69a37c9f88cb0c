"""StableAvatar inference: reference image + driving audio -> talking-avatar mp4 (flags: ``--help``).

A shim over ``wan.cli.inference``; ``torchrun --nproc_per_node=N inference.py ...`` works the same way.
"""

import sys

from wan.cli.inference import main

if __name__ == "__main__":
    sys.exit(main())
