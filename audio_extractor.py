"""Extract a video's audio as a 16 kHz mono wav: python audio_extractor.py --video_path=in.mp4 --saved_audio_path=out.wav"""

from wan.preprocess.audio_extract import main

if __name__ == "__main__":
    main()
