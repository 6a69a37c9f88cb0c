"""Face masks for training clips: python face_mask_extractor.py --folder_root=talking_face_data/rec/singing --start=1 --end=500"""

from wan.preprocess.lip_masks import face_main

if __name__ == "__main__":
    face_main()
