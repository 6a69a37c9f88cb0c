"""TalkingVideoDataset: the clip folders the preprocessing tools write, as training samples.

Layout (one line per clip folder in a ``video_<bucket>_path.txt`` list):

    <clip>/sub_clip.mp4             only read for its frame rate (optional: frames / audio length otherwise)
    <clip>/audio.wav                driving audio, any rate (read at 16 kHz)
    <clip>/images/frame_<i>.png     RGB frames (png or jpg)
    <clip>/face_masks/<same name>   single-channel 0/255 face masks
    <clip>/lip_masks/<same name>    single-channel 0/255 lip masks (lip_mask_extractor.py)

The prompt comes from the folder path ("singing" / "speech" / "dancing"), as in the original.

Randomness: an item is a pure function of ``(index, item_seed)``. The loader (wan.data.mixing)
derives ``item_seed`` from the run seed, epoch and position, so a resumed or re-sharded run reads
exactly the same clips, windows and audio.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wan.constants import WAV2VEC_SAMPLE_RATE

from .masks import image_start_mask

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg")
PROMPTS = (  # first keyword found in the clip path -> prompt (order matters: "singing" wins)
    ("singing", "The protagonist is singing"),
    ("speech", "The protagonist is talking"),
    ("dancing", "The protagonist is simultaneously dancing and singing"),
)


def prompt_for(clip_dir: str) -> str:
    """The training prompt of a clip folder, from the category keyword in its path."""
    for keyword, prompt in PROMPTS:
        if keyword in clip_dir:
            return prompt
    raise ValueError(
        f"{clip_dir}: the path names no category; put clips under <bucket>/speech|singing|dancing/ so the prompt can be chosen"
    )


def sorted_frames(images_dir: Path) -> list[str]:
    """Frame file names ordered by their number (``frame_12.png`` or ``12.png``)."""
    names = [n for n in os.listdir(images_dir) if n.endswith(IMAGE_SUFFIXES)]

    def number(name: str) -> int:
        stem = name.rsplit(".", 1)[0]
        return int(stem.split("_")[1] if stem.startswith("frame_") else stem)

    return sorted(names, key=number)


def read_path_list(list_file: str | os.PathLike) -> list[str]:
    path = Path(list_file)
    if not path.is_file():
        raise FileNotFoundError(f"clip list {path} not found; write one clip folder per line (see docs/training.md)")
    clips = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not clips:
        raise ValueError(f"clip list {path} is empty")
    return clips


def normalise_audio(samples: np.ndarray) -> np.ndarray:
    """wav2vec2 input normalisation (Wav2Vec2FeatureExtractor, do_normalize=True): zero mean, unit variance."""
    samples = samples.astype(np.float32)
    return (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)


def load_audio_16k(path: Path) -> np.ndarray:
    """Mono float32 samples at 16 kHz (channels averaged, resampled with librosa only if needed)."""
    import soundfile as sf

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != WAV2VEC_SAMPLE_RATE:
        import librosa

        audio = librosa.resample(audio, orig_sr=rate, target_sr=WAV2VEC_SAMPLE_RATE)
    return audio


def clip_fps(clip: Path, num_frames: int, audio_seconds: float) -> float:
    """Frame rate of sub_clip.mp4; frames / audio duration when it is missing or reports 0."""
    video = clip / "sub_clip.mp4"
    if video.is_file():
        try:
            import av

            with av.open(str(video)) as container:
                rate = container.streams.video[0].average_rate
            if rate:
                return float(rate)
        except Exception as exc:  # unreadable container: fall back like the original does for fps 0
            logger.warning("could not read the frame rate of %s (%s); using frames / audio length", video, exc)
    return num_frames / audio_seconds


class TalkingVideoDataset(torch.utils.data.Dataset):
    """Samples of one resolution bucket.

    Each item (keys and shapes, F = n_sample_frames, H x W = the bucket size):
        pixel_values [F, 3, H, W] in [-1, 1]; masked_pixel_values (frame 0 kept, others 0);
        pixel_value_masks [F, 1, H, W] inpainting mask; clip_pixel_values [H, W, 3] in [0, 255]
        (the reference = first frame of the window); tgt_face_masks / tgt_lip_masks [1, F, H, W]
        in [0, 1]; vocal_input_values [S] normalised 16 kHz audio of the window
        (S = round(clip_length / fps * 16000)); text_prompt (str); clip_dir (str).
    """

    def __init__(self, list_file: str | os.PathLike, width: int, height: int, n_sample_frames: int, sample_frame_rate: int = 1):
        self.width, self.height = width, height
        self.n_sample_frames, self.sample_frame_rate = n_sample_frames, sample_frame_rate
        self.clips = [Path(c) for c in read_path_list(list_file)]
        for clip in self.clips:  # fail at start, naming the file and the tool that makes it
            prompt_for(str(clip))
            for need, tool in (("images", "ffmpeg (docs/training.md)"), ("face_masks", "the face-mask step"), ("lip_masks", "lip_mask_extractor.py")):
                if not (clip / need).is_dir():
                    raise FileNotFoundError(f"{clip / need} is missing (listed in {list_file}); create it with {tool}")
            if not (clip / "audio.wav").is_file():
                raise FileNotFoundError(f"{clip / 'audio.wav'} is missing (listed in {list_file}); create it with audio_extractor.py")

    def __len__(self) -> int:
        return len(self.clips)

    def _image(self, path: Path) -> torch.Tensor:
        """[H, W, 3] float in [-1, 1] (PIL default resize filter, as the original)."""
        img = Image.open(path).convert("RGB").resize((self.width, self.height))
        return torch.from_numpy(np.array(img)).float() / 127.5 - 1

    def _mask(self, path: Path) -> torch.Tensor:
        """[H, W] float in [0, 1]; all ones (whole frame weighted) when the file is missing."""
        if not path.is_file():
            logger.warning("mask %s is missing; using an all-ones mask", path)
            return torch.ones(self.height, self.width)
        img = Image.open(path)
        if img.mode not in ("L", "1", "I", "I;16", "F"):
            img = img.convert("L")
        img = img.resize((self.width, self.height))
        return torch.from_numpy(np.array(img, dtype=np.float32)) / 255

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        idx, item_seed = key if isinstance(key, tuple) else (key, 0)
        rng = random.Random(item_seed)
        clip = self.clips[idx]
        frames = sorted_frames(clip / "images")
        if not frames:
            raise FileNotFoundError(f"{clip / 'images'} holds no .png/.jpg frames")

        # 1. Window: n frames at the given stride from a random start (repeats if the video is short).
        clip_length = min(len(frames), (self.n_sample_frames - 1) * self.sample_frame_rate + 1)
        start = rng.randint(0, len(frames) - clip_length)
        indices = np.linspace(start, start + clip_length - 1, self.n_sample_frames, dtype=int).tolist()

        # 2. Frames and masks (mask files share the frame's name).
        pixels = torch.stack([self._image(clip / "images" / frames[i]) for i in indices]).permute(0, 3, 1, 2)
        face = torch.stack([self._mask(clip / "face_masks" / frames[i]) for i in indices])[None]
        lip = torch.stack([self._mask(clip / "lip_masks" / frames[i]) for i in indices])[None]
        reference = self._image(clip / "images" / frames[start])

        # 3. Audio of the window at 16 kHz, fixed length so clips of one bucket batch together.
        audio = load_audio_16k(clip / "audio.wav")
        fps = clip_fps(clip, len(frames), len(audio) / WAV2VEC_SAMPLE_RATE)
        first = int(indices[0] / fps * WAV2VEC_SAMPLE_RATE)
        length = int(round(clip_length / fps * WAV2VEC_SAMPLE_RATE))
        segment = audio[first : first + length]
        segment = np.pad(segment, (0, length - len(segment)))  # short audio: silence, not a crash

        # 4. Inpainting input: the reference frame known, the rest generated.
        inpaint = image_start_mask(self.n_sample_frames, self.height, self.width)
        return {
            "pixel_values": pixels,
            "masked_pixel_values": pixels * (1 - inpaint),
            "pixel_value_masks": inpaint,
            "clip_pixel_values": (reference * 0.5 + 0.5) * 255,
            "tgt_face_masks": face,
            "tgt_lip_masks": lip,
            "vocal_input_values": torch.from_numpy(normalise_audio(segment)),
            "text_prompt": prompt_for(str(clip)),
            "clip_dir": str(clip),
        }
