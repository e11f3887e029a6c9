"""CausalSelfAttention: shapes, the KV cache, RoPE, config validation. The layer contract (step ==
forward, causality): tests/test_layer_contract.py."""

from __future__ import annotations

import pytest
import torch

from rnnlab.layers.attention import AttentionConfig, CausalSelfAttention, rope

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


def _layer(dim=64, head_dim=16, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return CausalSelfAttention(AttentionConfig(dim=dim, head_dim=head_dim)).to(dtype)


def test_shapes_and_params():
    layer = _layer(dtype=torch.float32)
    x = torch.randn(3, 11, 64)
    assert layer(x).shape == x.shape
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {"qkv.weight": (192, 64), "out.weight": (64, 64)}


def test_kv_cache_grows_one_token_per_step():
    """The cache holds each step's key (after RoPE at its absolute position) and value."""
    layer = _layer()
    x = torch.randn(2, 13, 64, dtype=torch.float64)
    state = layer.init_state(2, torch.device("cpu"), torch.float64)
    for t in range(13):
        _, state = layer.step(x[:, t], state)
    assert state[0].shape == (2, 4, 13, 16) and state[1].shape == (2, 4, 13, 16)
    _, k, v = (x @ layer.qkv.weight.T).unflatten(-1, (3, 4, 16)).permute(2, 0, 3, 1, 4)  # [B, H, T, hd] each
    torch.testing.assert_close(state[0], rope(k, torch.arange(13), 10000.0))
    torch.testing.assert_close(state[1], v)


def test_forward_is_causal_softmax_attention_written_out():
    """softmax(q kᵀ / sqrt(head_dim) + causal mask) v per head, with RoPE on q and k, then the
    output projection: the module docstring with the layer's weights."""
    layer = _layer(dim=16, head_dim=4)
    T = 7
    x = torch.randn(2, T, 16, dtype=torch.float64)
    q, k, v = (x @ layer.qkv.weight.T).unflatten(-1, (3, 4, 4)).permute(2, 0, 3, 1, 4)
    pos = torch.arange(T)
    q, k = rope(q, pos, 10000.0), rope(k, pos, 10000.0)
    scores = (q @ k.transpose(-1, -2)) / 4**0.5
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    want = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).flatten(2) @ layer.out.weight.T
    torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-12)


def test_rope_is_relative():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(i, j):
        qi = rope(q, torch.tensor([i]), 10000.0)
        kj = rope(k, torch.tensor([j]), 10000.0)
        return (qi * kj).sum()

    torch.testing.assert_close(score(5, 2), score(103, 100))
    torch.testing.assert_close(rope(q, torch.tensor([0]), 10000.0), q)  # position 0: identity


def test_rope_is_the_rotate_half_rotation():
    """Channel pair (i, i + hd/2) at position p, as a complex number, turns by the angle
    ``p * base^(-2i/hd)`` counter-clockwise (the GPT-NeoX / Llama convention Hugging Face uses)."""
    torch.manual_seed(0)
    hd, base = 8, 100.0
    x = torch.randn(2, 3, 5, hd, dtype=torch.float64)
    pos = torch.tensor([0, 1, 4, 9, 30])
    angle = pos[:, None].double() * base ** (-2 * torch.arange(hd // 2, dtype=torch.float64) / hd)  # [T, hd/2]
    z = torch.complex(x[..., :hd // 2], x[..., hd // 2:]) * torch.polar(torch.ones_like(angle), angle)
    torch.testing.assert_close(rope(x, pos, base), torch.cat([z.real, z.imag], dim=-1))


@pytest.mark.parametrize("kw,msg", [
    (dict(dim=100, head_dim=64), "head_dim must divide dim (100), got 64: --layer head_dim=50 fits, or another even "
                                 "divisor of 100"),
    (dict(dim=97, head_dim=64), "head_dim must divide dim (97), got 64: heads need an even divisor of dim, and 97 has "
                                "none below 64"),
    (dict(dim=64, head_dim=0), "head_dim must be a positive integer (at most 65,536), got 0"),
    (dict(dim=63, head_dim=21), "head_dim must be even for RoPE, got 21"),
    (dict(dim=64, rope_base=-1.0), "rope_base must be a positive finite number, got -1"),
    (dict(dim=0), "dim must be a positive integer, got 0"),
])
def test_validate_messages(kw, msg):
    with pytest.raises(ValueError) as e:
        AttentionConfig(**kw).validate()
    assert str(e.value) == msg


def test_rope_of_bf16_is_computed_in_fp32():
    """RoPE's arithmetic runs in fp32 for bf16 inputs, rounded once at the end: rope of the input
    upcast, then rounded (bf16 products and sums would round every term)."""
    x = torch.randn(2, 3, 9, 16).bfloat16()
    pos = torch.arange(100, 109)
    assert torch.equal(rope(x, pos, 10000.0), rope(x.float(), pos, 10000.0).bfloat16())
