"""The LM shared by every mixer (rnnlab.models.lm): its forward written out (pre-norm residual blocks,
GELU MLP, final LayerNorm, head tied to the embedding, mean cross-entropy), mamba_ssm's wrapper
(RMSNorm, residual in fp32) written out, and its init. The mixers' own formulas: their test files;
LM.step == forward: tests/test_layer_contract.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnlab.models.config import ModelConfig
from rnnlab.models.lm import LM


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


def test_init_and_tied_head():
    torch.manual_seed(0)
    lm = LM(ModelConfig(model="e1", dim=64, depth=2))
    assert abs(lm.embed.weight.std().item() - 0.02) < 0.0004  # N(0, 0.02) over 256 x 64 values: sd of the std ~1e-4
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


def test_rescale_prenorm_residual_divides_only_what_writes_into_the_residual_stream():
    """``rescale_prenorm_residual`` (mamba_ssm's LM, GPT-2): with the same seed, each block's output
    projection (the mixer's ``output_projection``, and the MLP's ``proj`` where there is one) is the
    unscaled model's divided by sqrt(such weights per block x depth); every other weight is equal.
    A mixer with no output projection (minGRU at expansion 1) is refused in one line."""
    cases = [("mamba2", {"headdim": 8, "d_state": 8, "backend": "reference"}, None, ["mixer.out_proj.weight"]),
             ("e88", {"n_state": 4}, None, ["mixer.o_proj.weight"]),
             ("mingru", {"expansion": 1.5}, None, ["mixer.out_proj.weight"]),
             ("transformer", {"head_dim": 8}, None, ["mixer.out.weight", "mlp.proj.weight"]),
             ("e1", {}, 1.0, ["mixer.out_proj.weight", "mlp.proj.weight"])]
    for model, layer, mlp_ratio, scaled in cases:
        weights = []
        for rescale in (False, True):
            torch.manual_seed(0)
            cfg = ModelConfig(model=model, dim=16, depth=3, layer=layer, mlp_ratio=mlp_ratio,
                              rescale_prenorm_residual=rescale)
            weights.append(dict(LM(cfg).named_parameters()))
        plain, rescaled = weights
        for name, w in plain.items():
            divisor = (len(scaled) * 3) ** 0.5 if name.split(".", 2)[-1] in scaled else 1.0
            torch.testing.assert_close(rescaled[name], w / divisor, rtol=1e-6, atol=0, msg=f"{model} {name}")
        assert sum(name.split(".", 2)[-1] in scaled for name in plain) == 3 * len(scaled), model
    with pytest.raises(ValueError, match=r"^rescale_prenorm_residual: this mingru layer has no output projection"):
        LM(ModelConfig(model="mingru", dim=16, depth=2, rescale_prenorm_residual=True))


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_rmsnorm_and_an_fp32_residual_are_mamba_ssms_wrapper(norm):
    """``norm="rmsnorm"`` with ``residual_in_fp32`` is the wrapper of mamba_ssm's ``MixerModel`` (and the
    reference's later ``LadderLM``) around the same mixer: RMSNorm (weight only, eps 1e-5) before the
    mixer, the MLP and the head, the residual stream in fp32, each norm computed on it in fp32 and
    rounded once to the weights' dtype (mamba_ssm's fused add-and-norm). In pure bf16, forward and
    step by step equal that loop written out, and differ from the same weights with the residual in
    bf16; the parameters are the LayerNorm model's less its norms' biases. An fp32 residual around
    LayerNorms is normed the same way."""
    import dataclasses

    torch.manual_seed(0)
    cfg = ModelConfig(model="e1", dim=16, depth=2, mlp_ratio=1.0, norm=norm, residual_in_fp32=True)
    lm = LM(cfg).to(torch.bfloat16).eval()
    with torch.no_grad():  # norms away from their identity init, so each one counts
        for name, p in lm.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)

    def rms(norm, x):  # (or LayerNorm's, with its bias)
        assert x.dtype == torch.float32
        if isinstance(norm, torch.nn.LayerNorm):
            return F.layer_norm(x, (16,), norm.weight.float(), norm.bias.float(), eps=1e-5).to(torch.bfloat16)
        return F.rms_norm(x, (16,), norm.weight.float(), eps=1e-5).to(torch.bfloat16)

    def block_by_hand(block, x, s=None):
        y, s = (block.mixer(rms(block.norm, x)), None) if s is None else block.mixer.step(rms(block.norm, x), s)
        x = x + y
        return x + block.mlp(rms(block.mlp_norm, x))

    idx = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        x = lm.embed.weight[idx].float()
        for block in lm.blocks:
            x = block_by_hand(block, x)
        torch.testing.assert_close(lm(idx), rms(lm.norm_f, x) @ lm.embed.weight.T, rtol=0, atol=0)
        state = lm.init_state(2)
        for t in range(idx.shape[1]):
            xt = lm.embed.weight[idx[:, t]].float()
            for block, s in zip(lm.blocks, state):
                xt = block_by_hand(block, xt, s)
            got, state = lm.step(idx[:, t], state)
            torch.testing.assert_close(got, rms(lm.norm_f, xt) @ lm.embed.weight.T, rtol=0, atol=0)
        in_bf16 = LM(dataclasses.replace(cfg, residual_in_fp32=False)).to(torch.bfloat16).eval()
        in_bf16.load_state_dict(lm.state_dict())
        assert not torch.equal(in_bf16(idx), lm(idx))
    kind = torch.nn.RMSNorm if norm == "rmsnorm" else torch.nn.LayerNorm
    assert all(isinstance(n, kind) for b in lm.blocks for n in (b.norm, b.mlp_norm))
    layernorm = LM(dataclasses.replace(cfg, norm="layernorm"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # two norms a block and the final one, 16 biases each
    assert count(layernorm) - count(lm) == (5 * 16 if norm == "rmsnorm" else 0)
