"""The attention function: backends agree where their semantics agree, and differ where they should."""

from __future__ import annotations

import pytest
import torch

from wan.models import attention as A


def qkv(b=2, lq=6, lk=9, n=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, lq, n, d, generator=g), torch.randn(b, lk, n, d, generator=g), torch.randn(b, lk, n, d, generator=g))


def reference(q, k, v):
    scores = torch.einsum("bqnd,bknd->bnqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    return torch.einsum("bnqk,bknd->bqnd", scores.softmax(-1), v.double()).float()


def test_default_is_plain_softmax_attention():
    q, k, v = qkv()
    torch.testing.assert_close(A.attention(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-5)


def test_unmasked_ignores_lengths_masked_uses_them():
    q, k, v = qkv()
    lens = torch.tensor([4, 9])
    unmasked = A.attention(q, k, v, k_lens=lens, backend="sdpa_unmasked")
    torch.testing.assert_close(unmasked, reference(q, k, v), rtol=1e-5, atol=1e-5)
    masked = A.attention(q, k, v, k_lens=lens, backend="sdpa")
    # row 0 sees only its first 4 keys, row 1 all 9
    torch.testing.assert_close(masked[0:1], reference(q[0:1], k[0:1, :4], v[0:1, :4]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked[1:2], unmasked[1:2], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(masked[0], unmasked[0], atol=1e-4)


def test_masked_with_full_lengths_equals_unmasked():
    q, k, v = qkv()
    full = torch.tensor([9, 9])
    torch.testing.assert_close(A.attention(q, k, v, k_lens=full, backend="sdpa"), A.attention(q, k, v), rtol=1e-6, atol=1e-6)


def test_backend_selection(monkeypatch):
    monkeypatch.setenv("WAN_ATTENTION_BACKEND", "sdpa")
    assert A.get_attention_backend() == "sdpa"
    with A.attention_backend("sdpa_unmasked"):
        assert A.get_attention_backend() == "sdpa_unmasked"
    assert A.get_attention_backend() == "sdpa"
    monkeypatch.setenv("WAN_ATTENTION_BACKEND", "nope")
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        A.get_attention_backend()


def test_flash_backend_without_package_is_a_clear_error():
    pytest.importorskip("torch")
    try:
        import flash_attn  # noqa: F401

        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install flash-attn"):
        A.set_attention_backend("flash2")


def test_flash_sdp_disabled_changes_nothing():
    """The original raised ZeroDivisionError (on purpose) when PyTorch's flash SDP kernel was disabled; here
    both SDPA backends still compute softmax attention, unmasked and masked, with the same numbers."""
    q, k, v = qkv()
    lens = torch.tensor([4, 9])
    enabled = torch.backends.cuda.flash_sdp_enabled()
    torch.backends.cuda.enable_flash_sdp(False)
    try:
        unmasked = A.attention(q, k, v, backend="sdpa_unmasked")
        masked = A.attention(q, k, v, k_lens=lens, backend="sdpa")
    finally:
        torch.backends.cuda.enable_flash_sdp(enabled)
    torch.testing.assert_close(unmasked, reference(q, k, v), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked[0:1], reference(q[0:1], k[0:1, :4], v[0:1, :4]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked[1:2], unmasked[1:2], rtol=1e-5, atol=1e-5)
