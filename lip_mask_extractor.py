"""Lip masks for training clips: python lip_mask_extractor.py --folder_root=talking_face_data/rec/singing --start=1 --end=500"""

from wan.preprocess.lip_masks import main

if __name__ == "__main__":
    main()
