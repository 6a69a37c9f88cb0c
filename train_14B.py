"""StableAvatar training, preset 14B (flags: python train_14B.py --help; launchers: train_14B*.sh)."""

from wan.training.cli import main

if __name__ == "__main__":
    main(preset="14B")
