"""StableAvatar training, preset 1B_square (flags: python train_1B_square.py --help; launchers: train_1B_square*.sh)."""

from wan.training.cli import main

if __name__ == "__main__":
    main(preset="1B_square")
