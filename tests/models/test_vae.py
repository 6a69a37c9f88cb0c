"""The Wan2.1 VAE: release keys, the golden case, streaming decode (equality and memory), loading."""

from __future__ import annotations

import json
import weakref

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import CASES, assert_golden, key_map
from wan.models.loading import CheckpointError
from wan.models.vae import WanVAE, load_vae
from wan.testing.memory import LiveTensorBytes
from wan.testing.recipe import fill_state_dict

TINY = dict(base_dim=4, z_dim=4, latents_mean=(0.1, -0.2, 0.3, 0.0), latents_std=(1.5, 0.8, 1.2, 2.0))
# The golden case's decode tolerance (3 latent frames -> 9 frames), reused for the equivalences.
DECODE_TOL = json.loads((CASES / "vae" / "case.json").read_text())["tolerances"]["dec_enc9_mean"]


def assert_close(got: torch.Tensor, ref: torch.Tensor, tol: dict = DECODE_TOL) -> None:
    assert got.shape == ref.shape
    diff = (got.double() - ref.double()).abs()
    rel = (got.double() - ref.double()).norm() / ref.double().norm()
    assert diff.max() <= tol["max_abs"] and rel <= tol["rel_l2"], f"max_abs {diff.max():.3g}, rel_l2 {rel:.3g}"


@pytest.fixture(scope="module")
def tiny() -> WanVAE:
    return fill_state_dict(WanVAE(**TINY)).eval()


def latents(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- the release layout ------------------------------------------------------------------------


def test_state_dict_is_the_release_key_map():
    with torch.device("meta"):
        vae = WanVAE()
    ref = key_map("vae")
    got = vae.state_dict()
    assert list(got) == list(ref)  # same keys, same order as the original module
    assert {k: list(v.shape) for k, v in got.items()} == {k: v[0] for k, v in ref.items()}
    assert sum(p.numel() for p in vae.parameters()) == 126_892_531


def test_key_map_agrees_with_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with torch.device("meta"):
        vae = WanVAE()
    file_keys = [k.removeprefix("model.") for k in key_map("vae")]
    theirs = {v: k for k, v in convert_wan_vae_to_diffusers({k: k for k in file_keys}).items()}  # file key -> diffusers
    ours = {w.removeprefix("model."): d.removeprefix("model.") for w, d in vae._wan_to_inner.items()}
    assert ours == theirs


def test_golden_vae():
    """Full-size VAE, recipe weights: encode 5/9 frames (normalised mean, logvar, raw mean),
    decode 2/3 latent frames (clamped, unclamped), the latent statistics."""
    assert_golden("vae")


# --- encode / decode contracts (tiny config) ---------------------------------------------------


def test_encode_decode_shapes_and_normalisation(tiny):
    video = torch.rand(2, 3, 9, 32, 48, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    with torch.no_grad():
        mean, logvar = tiny.encode_moments(video)
        raw, _ = tiny.encode_moments(video, normalize=False)
        recon = tiny.decode(mean)
    assert mean.shape == logvar.shape == (2, 4, 3, 4, 6)
    assert torch.equal(tiny.encode(video[:1]), mean[:1])
    assert logvar.min() >= -30 and logvar.max() <= 20
    expected = (raw - torch.tensor(TINY["latents_mean"]).view(1, 4, 1, 1, 1)) / torch.tensor(TINY["latents_std"]).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(tiny.denormalize_latents(mean), raw)
    assert recon.shape == video.shape
    assert recon.abs().max() <= 1.0


def test_encode_rejects_bad_videos(tiny):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tiny.encode(torch.zeros(1, 3, 6, 32, 32))
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny.encode(torch.zeros(1, 3, 5, 30, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        tiny.encode(torch.zeros(3, 5, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 4, T, h, w\]"):
        tiny.decode(torch.zeros(1, 16, 2, 4, 4))


def test_decode_batch_equals_per_sample(tiny):
    z = latents(2, 4, 3, 4, 4, seed=2)
    with torch.no_grad():
        both = tiny.decode(z, clamp=False)
        assert_close(both[1:], tiny.decode(z[1:], clamp=False))
        assert_close(both[:1], tiny.decode(z[:1], clamp=False))


# --- streaming decode ---------------------------------------------------------------------------


def test_stream_decode_equals_one_shot_decode(tiny):
    z = latents(2, 4, 5, 8, 8, seed=3)
    chunks = list(tiny.stream_decode(z))
    assert [c.shape for c in chunks] == [torch.Size([2, 3, 1, 64, 64])] + [torch.Size([2, 3, 4, 64, 64])] * 4
    assert all(c.dtype == torch.float32 and c.abs().max() <= 1.0 for c in chunks)
    streamed = torch.cat(chunks, dim=2)
    with torch.no_grad():
        assert_close(streamed, tiny.decode(z))
        # An independent reference: diffusers' own frame loop (concatenating, clamping).
        assert_close(streamed, tiny.model.decode(tiny.denormalize_latents(z)).sample)
        unclamped = torch.cat(list(tiny.stream_decode(z, clamp=False)), dim=2)
        assert unclamped.abs().max() > 1.0  # the clamp is real at these weights
        assert_close(unclamped, tiny.decode(z, clamp=False))


def peak_bytes(fn) -> int:
    with torch.no_grad(), LiveTensorBytes() as meter:
        fn()
    return meter.peak


def test_stream_decode_memory_does_not_grow_with_length(tiny):
    short, long = latents(1, 4, 3, 8, 8, seed=4), latents(1, 4, 12, 8, 8, seed=5)

    def consume(z):
        for chunk in tiny.stream_decode(z):
            chunk.mul(255).to(torch.uint8)  # what a video writer does, then drops it

    extra_video_bytes = (12 - 3) * 4 * 3 * 64 * 64 * 4  # float32 frames the long video adds
    stream_growth = peak_bytes(lambda: consume(long)) - peak_bytes(lambda: consume(short))
    one_shot_growth = peak_bytes(lambda: tiny.decode(long)) - peak_bytes(lambda: tiny.decode(short))
    # The meter does see a growing video (control), and streaming holds none of it.
    assert one_shot_growth >= extra_video_bytes
    assert stream_growth <= 0.02 * extra_video_bytes, f"stream decode grew by {stream_growth} bytes for 4x the frames"


def test_stream_decode_keeps_no_reference_to_yielded_chunks(tiny):
    stream = tiny.stream_decode(latents(1, 4, 4, 4, 4, seed=6))
    first = weakref.ref(next(stream))
    next(stream)
    assert first() is None


# --- state dicts and files ---------------------------------------------------------------------


def test_state_dict_round_trip_strict(tiny):
    copy = WanVAE(**TINY)
    copy.load_state_dict(tiny.state_dict(), strict=True)
    for (name, a), (_, b) in zip(tiny.named_parameters(), copy.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    # diffusers-named keys load too (the inner module's own names)
    copy2 = WanVAE(**TINY)
    copy2.model.load_state_dict(tiny.model.state_dict(), strict=True)
    assert torch.equal(copy2.model.decoder.conv_out.weight, tiny.model.decoder.conv_out.weight)


def test_load_vae_release_format_and_diffusers_format(tiny, tmp_path):
    z = latents(1, 4, 2, 4, 4, seed=7)
    with torch.no_grad():
        ref = tiny.decode(z)
    files = {
        "Wan2.1_VAE.pth": {k.removeprefix("model."): v for k, v in tiny.state_dict().items()},  # as released: no 'model.'
        "bf16_VAE.pth": {k.removeprefix("model."): v.to(torch.bfloat16) for k, v in tiny.state_dict().items()},
        "diffusion_pytorch_model.safetensors": {k: v.contiguous() for k, v in tiny.model.state_dict().items()},
    }
    for name, state in files.items():
        path = tmp_path / name
        save_file(state, str(path)) if name.endswith(".safetensors") else torch.save(state, path)
        vae = load_vae(path, **TINY)
        assert not vae.training and all(p.dtype == torch.float32 and not p.requires_grad for p in vae.parameters())
        rounded = {k: v.to(torch.bfloat16).float() if name.startswith("bf16") else v for k, v in tiny.state_dict().items()}
        assert all(torch.equal(v, rounded[k]) for k, v in vae.state_dict().items()), name
    with torch.no_grad():
        assert torch.equal(vae.decode(z), ref)


def test_load_vae_errors_name_the_file(tiny, tmp_path):
    missing = tmp_path / "nowhere" / "Wan2.1_VAE.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/Wan2.1_VAE.pth"):
        load_vae(missing, **TINY)
    state = {k.removeprefix("model."): v for k, v in tiny.state_dict().items()}
    state["decoder.extra.weight"] = torch.zeros(1)
    del state["encoder.conv1.bias"]
    bad = tmp_path / "bad_vae.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"bad_vae\.pth.*model\.encoder\.conv1\.bias.*model\.decoder\.extra\.weight"):
        load_vae(bad, **TINY)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_vae(bad, **{**TINY, "base_dim": 8})


def test_tiling_is_opt_in(tiny):
    z = latents(1, 4, 2, 8, 8, seed=8)
    with torch.no_grad():
        faithful = tiny.decode(z)
        tiny.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24, tile_sample_stride_width=24)
        try:
            tiled = tiny.decode(z)
        finally:
            tiny.disable_tiling()
        assert torch.equal(tiny.decode(z), faithful)
    assert tiled.shape == faithful.shape and tiled.abs().max() <= 1.0
    assert not torch.equal(tiled, faithful)  # the tiled path really ran
