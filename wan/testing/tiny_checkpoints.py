"""Write a complete, tiny checkpoint folder in the original layout.

    python -m wan.testing.tiny_checkpoints DIR

DIR gets what the real download gives, with recipe-filled models small enough to run the whole
``inference.py`` on a CPU in seconds::

    DIR/Wan2.1-Fun-V1.1-1.3B-InP/   config.json, diffusion_pytorch_model.safetensors (base DiT, no
                                    audio keys), Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth,
                                    models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth,
                                    google/umt5-xxl/ (tokenizer)
    DIR/wav2vec2-base-960h/          config + processor files + weights
    DIR/StableAvatar-1.3B/transformer3d-square.pt   every DiT key, as the release
    DIR/wan_civitai_tiny.yaml        --config_path: the yaml with the tiny umT5/CLIP/VAE sizes
    DIR/speech_3s.wav                the first 3 s of examples/case-2/audio.wav, for the printed command

The outputs are noise-like videos (the weights are not trained); the folder exists to test the
code paths end to end: loading, validation, the pipeline, the mp4 with sound.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan.testing.recipe import fill_state_dict

BASE = "Wan2.1-Fun-V1.1-1.3B-InP"
TINY_DIT = dict(dim=64, ffn_dim=96, num_heads=4, num_layers=2, text_dim=32, audio_in_dim=32, audio_proj_dim=64, audio_adapter_heads=4, clip_dim=32)
TINY_T5 = dict(vocab=256, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=1, num_buckets=32, shared_pos=False, dropout=0.0)
TINY_CLIP = dict(image_size=32, patch_size=2, dim=32, mlp_ratio=2, num_heads=4, num_layers=2, out_dim=16)  # 16x16 patches + 1 = 257 tokens
TINY_VAE = dict(base_dim=8)
TINY_WAV2VEC = dict(
    vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
    conv_dim=[16] * 7, conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_bias=False,
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group", do_stable_layer_norm=False,
)  # fmt: skip
WORDS = (
    "a an the woman man person girl boy with short long brown black blond hair is are speaking singing talking to "
    "camera in bright dark room calm happy expression face smiling looking at and of on middle aged young old "
    "wearing shirt white red blue green background light studio lips moving natural"
).split()


def write_tokenizer(folder: Path) -> None:
    """A word-level stand-in for google/umt5-xxl: pad 0, </s> 1 appended, unk 2; loads with AutoTokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512)
    fast.save_pretrained(str(folder))


def write_wav2vec(folder: Path, model=None) -> None:
    """A wav2vec2 folder (weights, config, processor files); ``model`` default: the tiny recipe-filled one."""
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Model, Wav2Vec2Processor

    folder.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else fill_state_dict(Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC)))
    model.save_pretrained(str(folder))
    letters = ["<pad>", "<s>", "</s>", "<unk>", "|"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + ["'"]
    (folder / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(letters)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
    features = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(str(folder))


def write_yaml(path: Path, sizes: dict[str, dict] | None = None) -> None:
    """The repo's yaml, with ``sizes`` (e.g. ``{"text_encoder_kwargs": TINY_T5}``) merged into its sections."""
    repo_yaml = Path(__file__).resolve().parents[2] / "deepspeed_config" / "wan2.1" / "wan_civitai.yaml"
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(repo_yaml) if repo_yaml.is_file() else OmegaConf.create({})
    for section, fields in (sizes or {}).items():
        cfg[section] = {**OmegaConf.to_container(cfg.get(section, {})), **fields}
    OmegaConf.save(cfg, path)


def _cpu(state: dict, dtype: torch.dtype | None = None) -> dict:
    return {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in state.items()}


@torch.no_grad()
def write_checkpoint_folder(root: str | Path, dit, vae, t5, clip, wav2vec_model=None, sizes: dict[str, dict] | None = None) -> dict[str, Path]:
    """Save these modules under ``root`` in the release layout (any size, any device); returns the
    paths inference.py needs. ``sizes``: yaml fields for models smaller than the release."""
    root = Path(root)
    base = root / BASE
    base.mkdir(parents=True, exist_ok=True)
    state = _cpu(dit.state_dict())
    (base / "config.json").write_text(json.dumps({"_class_name": type(dit).__name__, **dit.config}, default=list, indent=1))
    save_file({k: v for k, v in state.items() if "vocal" not in k}, str(base / "diffusion_pytorch_model.safetensors"))
    (root / "StableAvatar-1.3B").mkdir(exist_ok=True)
    torch.save(_cpu(state, torch.bfloat16), root / "StableAvatar-1.3B" / "transformer3d-square.pt")
    del state
    torch.save({k.removeprefix("model."): v for k, v in _cpu(vae.state_dict()).items()}, base / "Wan2.1_VAE.pth")
    torch.save(_cpu(t5.state_dict(), torch.bfloat16), base / "models_t5_umt5-xxl-enc-bf16.pth")
    clip_state = {k.removeprefix("model."): v for k, v in _cpu(clip.state_dict()).items()}
    clip_state["log_scale"] = torch.tensor(4.6)  # the release keeps the unused text tower and logit scale
    torch.save(clip_state, base / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    write_tokenizer(base / "google" / "umt5-xxl")
    write_wav2vec(root / "wav2vec2-base-960h", wav2vec_model)
    write_yaml(root / "wan_civitai_tiny.yaml" if sizes else root / "wan_civitai.yaml", sizes)
    return {
        "pretrained_model_name_or_path": base,
        "transformer_path": root / "StableAvatar-1.3B" / "transformer3d-square.pt",
        "pretrained_wav2vec_path": root / "wav2vec2-base-960h",
        "config_path": root / ("wan_civitai_tiny.yaml" if sizes else "wan_civitai.yaml"),
    }


@torch.no_grad()
def write_tiny_checkpoints(root: str | Path) -> dict[str, Path]:
    """Write the tiny folder under ``root``; returns the paths inference.py needs."""
    from wan.configs import transformer_config
    from wan.models.clip import CLIPVisionEncoder
    from wan.models.t5 import WanT5Encoder
    from wan.models.transformer import WanAvatarTransformer3DModel
    from wan.models.vae import WanVAE

    return write_checkpoint_folder(
        root,
        dit=fill_state_dict(WanAvatarTransformer3DModel(**transformer_config("1.3B", **TINY_DIT))),
        vae=fill_state_dict(WanVAE(**TINY_VAE)),
        t5=fill_state_dict(WanT5Encoder(**TINY_T5)),
        clip=fill_state_dict(CLIPVisionEncoder(**TINY_CLIP)),
        sizes={"text_encoder_kwargs": TINY_T5, "image_encoder_kwargs": TINY_CLIP, "vae_kwargs": TINY_VAE},
    )


def quick_run_command(paths: dict[str, Path], root: str | Path, seconds: float = 3.0) -> str:
    """An ``inference.py`` command on the tiny folder that finishes in well under a minute on a CPU:
    64x64, 2 steps, the first ``seconds`` of the example speech (written into ``root``)."""
    import shlex

    import soundfile as sf

    from wan.audio import load_audio
    from wan.constants import WAV2VEC_SAMPLE_RATE

    repo = Path(__file__).resolve().parents[2]
    audio = Path(root) / f"speech_{seconds:g}s.wav"
    sf.write(audio, load_audio(repo / "examples" / "case-2" / "audio.wav")[: int(seconds * WAV2VEC_SAMPLE_RATE)], WAV2VEC_SAMPLE_RATE)
    flags = {
        **paths,
        "validation_reference_path": "examples/case-2/reference.png",
        "validation_driven_audio_path": audio,
        "output_dir": "outputs/tiny",
        "width": 64,
        "height": 64,
        "sample_steps": 2,
        "device": "cpu",
    }
    return ".venv/bin/python inference.py " + " ".join(shlex.quote(f"--{k}={v}") for k, v in flags.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wan.testing.tiny_checkpoints", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="folder to write (created)")
    args = parser.parse_args(argv)
    paths = write_tiny_checkpoints(args.dir)
    print(f"tiny checkpoints written to {args.dir}\nrun (from the repository root; 64x64, 3 s of speech, 2 steps on the CPU): {quick_run_command(paths, args.dir)}")


if __name__ == "__main__":
    main()
