"""Vocals from a song with Kim_Vocal_2.onnx (name kept from the original, misspelling and all).

python vocal_seperator.py --audio_separator_model_file=checkpoints/Kim_Vocal_2.onnx --audio_file_path=song.wav --saved_vocal_path=vocal.wav
"""

from wan.preprocess.vocal_separation import main

if __name__ == "__main__":
    main()
