"""The LM shared by every mixer (rnnlab.models.lm): its forward written out (pre-norm residual blocks,
GELU MLP, final LayerNorm, head tied to the embedding, mean cross-entropy) and its init. The
mixers' own formulas: their test files; LM.step == forward: tests/test_layer_contract.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnlab.models.config import ModelConfig
from rnnlab.models.lm import LM
from rnnlab.models.norm import add_layer_norm


def _layer_norm(norm, x):
    return F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, eps=1e-5)


def test_forward_is_the_pre_norm_residual_stack():
    torch.manual_seed(0)
    lm = LM(ModelConfig(model="transformer", dim=32, depth=2, mlp_ratio=1.5, layer={"head_dim": 16})).double()
    with torch.no_grad():  # LayerNorms away from their identity init, so each one counts
        for name, p in lm.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    idx, targets = torch.randint(0, 256, (2, 7)), torch.randint(0, 256, (2, 7))
    x = lm.embed.weight[idx]
    for block in lm.blocks:
        x = x + block.mixer(_layer_norm(block.norm, x))
        assert block.mlp.fc.weight.shape == (48, 32)  # hidden = round(dim * mlp_ratio)
        x = x + F.gelu(_layer_norm(block.mlp_norm, x) @ block.mlp.fc.weight.T) @ block.mlp.proj.weight.T
    logits = _layer_norm(lm.norm_f, x) @ lm.embed.weight.T
    torch.testing.assert_close(lm(idx), logits)
    loss = F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))
    torch.testing.assert_close(lm(idx, targets).double(), loss, rtol=1e-6, atol=1e-6)  # computed in fp32


def test_add_layer_norm_is_the_residual_add_then_layer_norm():
    """Each block's first step: the stream ``residual + hidden`` (nothing added before the first
    block) and its LayerNorm; ``fused_add_norm`` off the GPU is the same plain ops, bit for bit,
    in the whole LM too."""
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(8)
    with torch.no_grad():
        norm.weight.add_(torch.randn(8) * 0.3)
        norm.bias.add_(torch.randn(8) * 0.3)
    hidden, residual = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    y, stream = add_layer_norm(hidden, residual, norm)
    assert torch.equal(stream, residual + hidden)
    torch.testing.assert_close(y, _layer_norm(norm, residual + hidden))
    y, stream = add_layer_norm(None, residual, norm, fused=True)
    assert stream is residual and torch.equal(y, _layer_norm(norm, residual))
    plain = LM(ModelConfig(model="mingru", dim=16, depth=2))
    fused = LM(ModelConfig(model="mingru", dim=16, depth=2, fused_add_norm=True))
    fused.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 256, (2, 5))
    assert torch.equal(fused(idx), plain(idx))


def test_bf16_forward_is_the_written_out_loop_bit_for_bit():
    """The blocks' ``(hidden, residual)`` form adds and normalises in the order of ``x = x +
    mixer(LayerNorm(x))``: in bf16, where any other order or rounding point would show, the
    logits are those of the loop written out, bit for bit."""
    torch.manual_seed(0)
    lm = LM(ModelConfig(model="mingru", dim=32, depth=3)).to(torch.bfloat16)
    idx = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        x = lm.embed(idx)
        for block in lm.blocks:
            x = x + block.mixer(block.norm(x))
        assert torch.equal(lm(idx), lm.head(lm.norm_f(x)))


def test_fused_add_norm_without_fla_says_what_it_needs(monkeypatch):
    """On CUDA ``fused_add_norm`` runs fla's kernel; when fla does not import, one line says so:
    at the kernel's call, and before training starts (the trainer's start-up check, off CUDA
    nothing to refuse)."""
    from rnnlab.models import norm as norm_mod
    from rnnlab.ops.registry import LazyKernel
    from rnnlab.train.config import TrainConfig
    from rnnlab.train.runtime import check_trainable

    monkeypatch.setattr(norm_mod, "FLA_LAYER_NORM", LazyKernel("rnnlab_no_such_module"))
    needs = r"fused_add_norm needs fla on CUDA \(pip install fla-core; ModuleNotFoundError.*\); or leave it off"
    with pytest.raises(RuntimeError, match=needs):
        norm_mod._fla_add_layer_norm(None, torch.zeros(2, 4), torch.ones(4), torch.zeros(4), 1e-5)
    cfg = TrainConfig.from_dict({"model": {"model": "mingru", "fused_add_norm": True}})
    with pytest.raises(ValueError, match="^model mingru cannot train on cuda: " + needs + "$"):
        check_trainable(cfg, torch.device("cuda"))
    check_trainable(cfg, torch.device("cpu"))
    check_trainable(TrainConfig.from_dict({"model": "mingru"}), torch.device("cuda"))


def test_init_and_tied_head():
    torch.manual_seed(0)
    lm = LM(ModelConfig(model="e1", dim=64, depth=2))
    assert abs(lm.embed.weight.std().item() - 0.02) < 0.001  # N(0, 0.02) over 256 x 64 values
    assert lm.head.weight is lm.embed.weight and lm.head.bias is None
    assert all(b.mlp is None and b.mlp_norm is None for b in lm.blocks)  # recurrent models: no MLP by default
    for norm in (lm.norm_f, *(b.norm for b in lm.blocks)):
        assert torch.equal(norm.weight, torch.ones(64)) and torch.equal(norm.bias, torch.zeros(64))
    untied = LM(ModelConfig(model="e1", dim=64, depth=2, tie_embeddings=False))
    assert untied.head.weight is not untied.embed.weight


def test_mlp_width_rounds_to_nearest():
    """The MLP's hidden width is round(dim * mlp_ratio), as the parameter counter assumes:
    32 * 1.4 = 44.8 -> 45 (truncation would give 44)."""
    lm = LM(ModelConfig(model="e1", dim=32, depth=1, mlp_ratio=1.4))
    assert lm.blocks[0].mlp.fc.weight.shape == (45, 32) and lm.blocks[0].mlp.proj.weight.shape == (32, 45)


def test_loss_is_fp32_cross_entropy_of_bf16_logits():
    """A bf16 model's loss is the cross-entropy of its logits taken in fp32 (bf16 would round the
    log-sum-exp over 256 bytes to ~3 significant digits)."""
    torch.manual_seed(0)
    lm = LM(ModelConfig(model="e1", dim=16, depth=1)).to(torch.bfloat16).eval()  # eval: u fixed
    idx, tgt = torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8))
    loss = lm(idx, tgt)
    want = F.cross_entropy(lm(idx).float().reshape(-1, 256), tgt.reshape(-1))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=0, atol=1e-6)
