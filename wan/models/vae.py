"""The Wan2.1 causal 3D video VAE: diffusers' ``AutoencoderKLWan`` behind the original's interface.

What the original StableAvatar VAE (``wan/models/wan_vae.py``) does, and this class keeps:

* ``encode`` returns latents already normalised, ``(mu - mean) * (1 / std)``, with the 16
  per-channel constants of ``Wan2.1_VAE.pth``; ``decode`` un-normalises, decodes and clamps to [-1, 1].
* The encoder runs the frames in chunks ``[0], [1:5], [5:9], ...`` and the decoder one latent
  frame at a time, both through the causal convolution cache (the last 2 frames of every conv
  input), so a video of ``1 + 4k`` frames gives ``1 + k`` latent frames and back.
* Checkpoint keys: ``Wan2.1_VAE.pth`` stores ``encoder.conv1.weight`` ...; the original module
  adds ``model.``. Our ``state_dict()`` shows exactly those ``model.*`` keys
  (``tests/data/keys/vae.json``) and ``load_state_dict`` accepts them.

Why diffusers inside: with the key conversion below, ``diffusers.AutoencoderKLWan`` reproduces
the golden case bit for bit (max_abs 0.0 on every output), so there is no second copy of the
network here; see docs/vae.md for the measurements. The conversion is built from the structure
(levels x residual blocks), checked against diffusers' own module at construction time, and
installed as state_dict hooks, so parameter *names* inside are diffusers', keys outside are Wan's.

What this file adds: ``stream_decode``, which yields the decoded video one latent frame at a time
through an explicit cache, so a long video never has to exist in one tensor (the original
concatenates every frame on the GPU and runs out of memory on long videos), and ``decode``
writes into one preallocated output instead of concatenating (one copy of the video at peak,
not two).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
from diffusers import AutoencoderKLWan
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook

from wan.models.loading import CheckpointError, load_into, load_state_dict_file, require_file

# Per-channel statistics of the Wan2.1 VAE latents (from the released code; not in the .pth file).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

TEMPORAL_STRIDE = 4  # video frames per latent frame after the first
SPATIAL_STRIDE = 8  # pixels per latent cell along H and W (the number of 2x stages is len(dim_mult) - 1)

# ---------------------------------------------------------------------------------------------
# Key conversion: Wan's module paths <-> diffusers' module paths
# ---------------------------------------------------------------------------------------------

# Inside a residual block, Wan numbers the layers of one nn.Sequential
# (RMS_norm, SiLU, conv, RMS_norm, SiLU, Dropout, conv); diffusers names them.
_RESIDUAL_LAYERS = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2", "shortcut": "conv_shortcut"}


def wan_to_diffusers_paths(num_levels: int, num_res_blocks: int) -> dict[str, str]:
    """Module path map, Wan (``encoder.downsamples.3``) -> diffusers (``encoder.down_blocks.3``).

    Wan keeps the encoder's and decoder's stages as flat ``nn.Sequential`` lists: per level,
    ``num_res_blocks`` (decoder: ``num_res_blocks + 1``) residual blocks and then a resampler on
    all but the last level. diffusers keeps the encoder flat too but groups the decoder by level
    (``up_blocks.{level}.resnets.{r}`` / ``up_blocks.{level}.upsamplers.0``). Paths are relative
    to the inner autoencoder (no ``model.`` prefix).
    """
    paths = {"conv1": "quant_conv", "conv2": "post_quant_conv"}

    def residual(wan: str, diff: str) -> None:
        for a, b in _RESIDUAL_LAYERS.items():
            paths[f"{wan}.{a}"] = f"{diff}.{b}"

    for side in ("encoder", "decoder"):
        paths[f"{side}.conv1"] = f"{side}.conv_in"
        residual(f"{side}.middle.0", f"{side}.mid_block.resnets.0")
        paths[f"{side}.middle.1"] = f"{side}.mid_block.attentions.0"
        residual(f"{side}.middle.2", f"{side}.mid_block.resnets.1")
        paths[f"{side}.head.0"] = f"{side}.norm_out"
        paths[f"{side}.head.2"] = f"{side}.conv_out"
    j = 0
    for level in range(num_levels):
        for _ in range(num_res_blocks):
            residual(f"encoder.downsamples.{j}", f"encoder.down_blocks.{j}")
            j += 1
        if level != num_levels - 1:
            paths[f"encoder.downsamples.{j}"] = f"encoder.down_blocks.{j}"
            j += 1
    j = 0
    for level in range(num_levels):
        for r in range(num_res_blocks + 1):
            residual(f"decoder.upsamples.{j}", f"decoder.up_blocks.{level}.resnets.{r}")
            j += 1
        if level != num_levels - 1:
            paths[f"decoder.upsamples.{j}"] = f"decoder.up_blocks.{level}.upsamplers.0"
            j += 1
    return paths


_WAN_PART_ORDER = {"encoder": 0, "conv1": 1, "conv2": 2, "decoder": 3}
_WAN_STAGE_ORDER = {
    "encoder": {"conv1": 0, "downsamples": 1, "middle": 2, "head": 3},
    "decoder": {"conv1": 0, "middle": 1, "upsamples": 2, "head": 3},
}


def _wan_rank(wan_key: str) -> tuple[int, int, int]:
    """Sort key giving Wan's state_dict order: part, stage within the part, middle layer index."""
    parts = wan_key.split(".")
    if parts[0] not in _WAN_STAGE_ORDER:  # conv1 / conv2 between encoder and decoder
        return _WAN_PART_ORDER[parts[0]], 0, 0
    middle = int(parts[2]) if parts[1] == "middle" else 0
    return _WAN_PART_ORDER[parts[0]], _WAN_STAGE_ORDER[parts[0]][parts[1]], middle


def _rename(key: str, paths: dict[str, str]) -> str:
    """Rename ``key`` by the longest module-path prefix found in ``paths`` (KeyError if none)."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:n])
        if head in paths:
            return ".".join([paths[head], *parts[n:]])
    raise KeyError(key)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class WanVAE(ModelMixin, ConfigMixin):
    """Wan2.1 causal video VAE (127M parameters at the release config).

    Args:
        base_dim: channels of the first stage (96 released).
        z_dim: latent channels (16).
        dim_mult: channel multiplier per stage; ``len(dim_mult) - 1`` spatial 2x stages.
        num_res_blocks: residual blocks per encoder stage (decoder: one more).
        temperal_downsample: which encoder stages also halve time (spelling as in Wan);
            the decoder mirrors it.
        latents_mean, latents_std: per-channel latent statistics, ``z_dim`` values each;
            ``encode`` returns ``(mu - mean) / std``.

    The inner ``model`` is a ``diffusers.AutoencoderKLWan``; ``state_dict()`` presents its
    entries under the original Wan keys (``model.encoder.conv1.weight`` ...), and
    ``load_state_dict`` accepts Wan keys and diffusers keys alike.
    """

    _skip_keys = ["feat_cache", "feat_idx"]

    @register_to_config
    def __init__(
        self,
        base_dim: int = 96,
        z_dim: int = 16,
        dim_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        temperal_downsample: Sequence[bool] = (False, True, True),
        latents_mean: Sequence[float] = WAN21_LATENTS_MEAN,
        latents_std: Sequence[float] = WAN21_LATENTS_STD,
    ) -> None:
        super().__init__()
        if len(latents_mean) != z_dim or len(latents_std) != z_dim:
            raise ValueError(f"latents_mean/latents_std need z_dim={z_dim} values each, got {len(latents_mean)}/{len(latents_std)}")
        if len(temperal_downsample) != len(dim_mult) - 1:
            raise ValueError(f"temperal_downsample needs {len(dim_mult) - 1} entries (one per downsampling stage), got {len(temperal_downsample)}")
        self.model = AutoencoderKLWan(
            base_dim=base_dim,
            z_dim=z_dim,
            dim_mult=list(dim_mult),
            num_res_blocks=num_res_blocks,
            attn_scales=[],
            temperal_downsample=list(temperal_downsample),
            latents_mean=list(latents_mean),
            latents_std=list(latents_std),
        )
        self._build_key_maps(len(dim_mult), num_res_blocks)
        self.register_state_dict_post_hook(_present_wan_keys)
        self.register_load_state_dict_pre_hook(_accept_wan_keys)

    def _build_key_maps(self, num_levels: int, num_res_blocks: int) -> None:
        paths = wan_to_diffusers_paths(num_levels, num_res_blocks)
        reverse = {d: w for w, d in paths.items()}
        to_wan: dict[str, str] = {}
        for key in self.model.state_dict():
            try:
                wan = _rename(key, reverse)
            except KeyError:
                wan = None
            # Hard check: a diffusers release that renames or adds a layer must fail here,
            # not load a checkpoint into the wrong tensors.
            if wan is None or _rename(wan, paths) != key or wan in to_wan.values():
                raise RuntimeError(f"WanVAE: no Wan key for diffusers AutoencoderKLWan entry {key!r}; the key map needs updating for this diffusers version")
            to_wan[key] = wan
        # Full keys relative to this module, in Wan's order. diffusers registers the parts in
        # another order (and a mid block's attention before its resnets); inside one layer the
        # two agree, so a stable sort on (part, stage, middle index) restores Wan's order.
        ranked = sorted(to_wan.items(), key=lambda kv: _wan_rank(kv[1]))
        self._inner_to_wan = {f"model.{d}": f"model.{w}" for d, w in ranked}
        self._wan_to_inner = {w: d for d, w in self._inner_to_wan.items()}

    def wan_key(self, key: str) -> str:
        """The Wan name of a diffusers-style key of this module (``model.encoder.conv_in.weight``)."""
        return self._inner_to_wan.get(key, key)

    # --- latent normalisation -------------------------------------------------------------

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1/std) as [1, z, 1, 1, 1] in ``like``'s dtype and device (1/std taken in float32, as Wan does)."""
        mean = torch.tensor(self.config.latents_mean, dtype=torch.float32)
        inv_std = 1.0 / torch.tensor(self.config.latents_std, dtype=torch.float32)
        shape = (1, -1, 1, 1, 1)
        return mean.to(like.device, like.dtype).view(shape), inv_std.to(like.device, like.dtype).view(shape)

    def normalize_latents(self, mu: torch.Tensor) -> torch.Tensor:
        """Encoder mean [B, z, T', h, w] -> the latents the DiT sees: ``(mu - mean) * (1/std)``."""
        mean, inv_std = self._stats(mu)
        return (mu - mean) * inv_std

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of ``normalize_latents``, written ``z / (1/std) + mean`` as Wan does (bit parity)."""
        mean, inv_std = self._stats(z)
        return z / inv_std + mean

    # --- encode -----------------------------------------------------------------------------

    @staticmethod
    def _check_video(video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"WanVAE.encode expects a video [B, 3, T, H, W] in [-1, 1], got shape {tuple(video.shape)}")
        t, h, w = video.shape[2:]
        if (t - 1) % TEMPORAL_STRIDE or h % SPATIAL_STRIDE or w % SPATIAL_STRIDE:
            raise ValueError(
                f"WanVAE.encode: video of {t} frames at {h}x{w}; frames must be 1 + 4k and height/width multiples of 8 "
                f"(the original silently drops trailing frames; trim or pad the clip to e.g. {1 + (t - 1) // 4 * 4} frames)"
            )

    @apply_forward_hook
    def encode_moments(self, video: torch.Tensor, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder posterior of a video.

        Args:
            video: [B, 3, T, H, W] in [-1, 1], T = 1 + 4k, H and W multiples of 8.
            normalize: return the normalised mean (what ``encode`` and the pipeline use);
                False gives the raw encoder mean.
        Returns:
            (mean, logvar), each [B, z, 1 + k, H/8, W/8]; logvar clamped to [-30, 20] as
            diffusers' ``DiagonalGaussianDistribution`` does. Samples are encoded one at a time.
        """
        self._check_video(video)
        means, logvars = [], []
        for sample in video.split(1):
            posterior = self.model.encode(sample).latent_dist
            means.append(posterior.mean)
            logvars.append(posterior.logvar)
        mean, logvar = torch.cat(means), torch.cat(logvars)
        return (self.normalize_latents(mean) if normalize else mean), logvar

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> normalised latent mean [B, z, (T-1)/4 + 1, H/8, W/8]
        (the original's ``encode(x).latent_dist.mode()``)."""
        return self.encode_moments(video)[0]

    # --- decode -----------------------------------------------------------------------------

    @staticmethod
    def _check_latents(latents: torch.Tensor, z_dim: int) -> None:
        if latents.ndim != 5 or latents.shape[1] != z_dim:
            raise ValueError(f"WanVAE.decode expects latents [B, {z_dim}, T, h, w], got shape {tuple(latents.shape)}")

    def _decoded_chunks(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """Unclamped decoder output per latent frame: [B, 3, 1, H, W] first, then [B, 3, 4, H, W].

        The cache is local (one list slot per causal conv of the decoder, holding the last
        frames of that conv's input), so two streams never share state.
        """
        cache: list = [None] * sum(isinstance(m, torch.nn.Conv3d) for m in self.model.decoder.modules())
        for i in range(latents.shape[2]):
            # Wan applies the 1x1x1 post-quant conv to all frames at once; per frame it is the
            # same arithmetic and keeps nothing proportional to the video length alive here.
            x = self.model.post_quant_conv(self.denormalize_latents(latents[:, :, i : i + 1]))
            # A fresh index list per frame: every causal conv finds its slot by call order.
            yield self.model.decoder(x, feat_cache=cache, feat_idx=[0])

    @apply_forward_hook
    def decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Normalised latents [B, z, T, h, w] -> video [B, 3, 1 + 4(T-1), 8h, 8w].

        Clamped to [-1, 1] unless ``clamp=False``. Samples are decoded one at a time (as Wan
        does) into one preallocated output. With ``enable_tiling()`` the spatially tiled
        decoder of diffusers runs instead (not the original's numerics; always clamps).
        """
        self._check_latents(latents, self.config.z_dim)
        tile_h, tile_w = self.model.tile_sample_min_height // SPATIAL_STRIDE, self.model.tile_sample_min_width // SPATIAL_STRIDE
        if self.model.use_tiling and (latents.shape[3] > tile_h or latents.shape[4] > tile_w):
            return self.model.tiled_decode(self.denormalize_latents(latents)).sample
        out = None
        for b in range(latents.shape[0]):
            t0 = 0
            for chunk in self._decoded_chunks(latents[b : b + 1]):
                if out is None:
                    frames = 1 + TEMPORAL_STRIDE * (latents.shape[2] - 1)
                    out = chunk.new_empty(latents.shape[0], chunk.shape[1], frames, *chunk.shape[3:])
                out[b : b + 1, :, t0 : t0 + chunk.shape[2]] = chunk
                t0 += chunk.shape[2]
        return out.clamp_(-1.0, 1.0) if clamp else out

    @apply_forward_hook
    @torch.no_grad()
    def stream_decode(self, latents: torch.Tensor, clamp: bool = True) -> Iterator[torch.Tensor]:
        """Decode chunk by chunk, never holding the whole video.

        Args:
            latents: normalised latents [B, z, T, h, w] (what the DiT produces).
            clamp: clamp each chunk to [-1, 1] (as ``decode`` does).
        Yields:
            One float tensor per latent frame, [B, 3, t, 8h, 8w] on the VAE's device and in its
            dtype, values in [-1, 1]: t = 1 for the first latent frame, 4 for every later one,
            so the chunks concatenated along dim 2 are ``decode(latents)`` (1 + 4(T-1) frames).
            The whole batch advances together. Each chunk is a fresh tensor the generator keeps
            no reference to: convert it (e.g. ``((x + 1) / 2 * 255)`` to uint8, [t, H, W, 3]
            per sample) and drop it, and memory stays at one chunk plus the causal cache
            (2 frames per decoder conv) however long the video. Runs under ``torch.no_grad``.
        """
        self._check_latents(latents, self.config.z_dim)
        for chunk in self._decoded_chunks(latents):
            yield chunk.clamp_(-1.0, 1.0) if clamp else chunk
            del chunk  # the consumer owns it now; don't keep it alive while decoding the next

    # --- options ----------------------------------------------------------------------------

    def enable_tiling(self, **tile_sizes: int) -> None:
        """Opt-in spatial tiling for ``encode``/``decode`` (diffusers' tiles and blending; sizes in
        pixels: tile_sample_min_height/width, tile_sample_stride_height/width). Cuts the
        activation peak of large frames; NOT the original's numerics; ``stream_decode`` ignores it."""
        self.model.enable_tiling(**tile_sizes)

    def disable_tiling(self) -> None:
        self.model.disable_tiling()


def _present_wan_keys(module: WanVAE, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: rename diffusers keys to Wan keys, in Wan's order."""
    ours = {k: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]}
    for inner_key, wan_key in module._inner_to_wan.items():
        if prefix + inner_key in ours:
            state_dict[prefix + wan_key] = ours.pop(prefix + inner_key)
    state_dict.update(ours)  # anything unmapped (none at the Wan2.1 config) keeps its name


def _accept_wan_keys(module: WanVAE, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: rename Wan keys to diffusers keys in place (diffusers keys pass)."""
    for wan_key, inner_key in module._wan_to_inner.items():
        if prefix + wan_key in state_dict:
            state_dict[prefix + inner_key] = state_dict.pop(prefix + wan_key)


# ---------------------------------------------------------------------------------------------
# Loading the released file
# ---------------------------------------------------------------------------------------------


def load_vae(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", **config) -> WanVAE:
    """Load ``Wan2.1_VAE.pth`` (keys without ``model.``) into a WanVAE, strictly.

    ``config`` overrides WanVAE's constructor arguments (the release layout by default; the
    tiny test checkpoints set ``base_dim``).

    Also accepts a file whose keys already carry ``model.`` (our own ``state_dict()``) and a
    diffusers-format VAE (``vae/diffusion_pytorch_model.safetensors`` of the ``-Diffusers``
    repos). Raises FileNotFoundError naming the file (and the download) when it is missing and
    CheckpointError naming the file and the keys when it does not match.
    """
    path = require_file(path, "Wan2.1 VAE checkpoint (Wan2.1_VAE.pth)")
    state = load_state_dict_file(path)
    state = {k if k.startswith("model.") else f"model.{k}": v for k, v in state.items()}
    with torch.device("meta"):
        vae = WanVAE(**config)
    state = {vae.wan_key(k): v for k, v in state.items()}  # diffusers-format keys -> Wan keys
    load_into(vae, state, source=str(path), strict=True, assign=True)
    meta = [name for name, p in vae.named_parameters() if p.is_meta]
    if meta:
        raise CheckpointError(f"{path}: {len(meta)} parameters were not loaded, e.g. {meta[:3]}")
    # nn.Module.to: diffusers' ModelMixin.to warns about fp32 modules on every dtype cast, even with none.
    return torch.nn.Module.to(vae, device=device, dtype=dtype).eval().requires_grad_(False)
