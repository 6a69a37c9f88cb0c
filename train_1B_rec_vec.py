"""StableAvatar training, preset 1B_vec_rec (flags: python train_1B_rec_vec.py --help; launchers: train_1B_rec_vec*.sh)."""

from wan.training.cli import main

if __name__ == "__main__":
    main(preset="1B_vec_rec")
