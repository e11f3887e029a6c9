"""Two short CPU runs pinned to the numbers the trainer produced before the issue-18 redesign, so a
refactor of the loop, config or checkpoints provably changes no behaviour (same seed -> same
losses, learning rates, held-out loss and final weights).

The configs are given as flat dicts (the on-disk ``config.json`` form), the one interface that
stays fixed through the redesign. Losses and weight norms are compared to 1e-6 relative, which
absorbs float differences between CPU instruction sets. The weights file's sha256 is compared
exactly where torch 2.13's CPU build runs its AVX512 kernels: it must be one of the digests recorded
on the two such machines seen. The second, a Xeon with AMX tiles, gives other last bits (its math
library picks other GEMM blockings), and there the commit that pinned the numbers (3432584) and
today's trainer give the same digests.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from rnnlab.train.config import TrainConfig
from rnnlab.train.trainer import run_training

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"model": {"model": "e1", "dim": 32, "depth": 2}, "batch_size": 4, "seq_len": 32, "steps": 8,
        "precision": "fp32", "lr": 3e-3, "eval_bytes": 4096, "device": "cpu"}
RECORDED_ON = ("2.13.0+cpu", "AVX512")

PINNED = {
    "schedulefree": dict(
        config={},
        losses=[5.539083957672119, 5.515408039093018, 5.513566970825195, 5.471135139465332,
                5.403708457946777, 5.361039638519287, 5.319370269775391, 5.225198268890381],
        lrs=[3e-3] * 8,
        val_loss=5.183267319296289,
        sha256={"538f9a99ff51008d18e923895b99627e7748372285893474ffed307c7e52f55b",  # where the numbers were pinned
                "aebb8d0bb08457082c09c0b1da003e8357463b381ed5c51c0ea1b1e5a36d0291"},  # a Xeon with AMX tiles
        norms=[0.58761772, 5.573876712, 0.035548203, 6.420404203, 5.654146808, 0.999999963, 0.039037123,
               5.649823669, 0.585007118, 5.644615315, 0.042715084, 6.675113323, 5.507628088, 0.999999913,
               0.052709299, 5.653184482, 2.047168074, 0.07337167, 5.690407848],
    ),
    # AdamW: linear warmup over 2 steps, then cosine to 0 at step 8; gradients clipped to norm 0.25
    "adamw-cosine-clip": dict(
        config={"optimizer": "adamw", "warmup_steps": 2, "grad_clip": 0.25},
        losses=[5.539083957672119, 5.53009033203125, 5.5219197273254395, 5.467202663421631,
                5.398777008056641, 5.355771064758301, 5.329840660095215, 5.295026779174805],
        lrs=[0.0015, 0.003, 0.003, 0.002799038105676658, 0.0022500000000000003, 0.0015,
             0.0007500000000000003, 0.00020096189432334193],
        val_loss=5.282824617671215,
        sha256={"a2b0e5405547bca53edb314180eb47102e2e8237036f00ec8e480599e7cf1890",  # where the numbers were pinned
                "2cdc4fb97b2ab8a9341752d79f962260db808f8fa77483c629fd2ff78dc7552d"},  # a Xeon with AMX tiles
        norms=[0.606784137, 5.574448448, 0.046323195, 6.42662932, 5.657268326, 0.999999976, 0.046058172,
               5.650526382, 0.602171972, 5.645783504, 0.044322406, 6.673618145, 5.505039698, 0.999999925,
               0.047188294, 5.646108154, 2.00337056, 0.067034267, 5.668581018],
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_run_matches_pinned_numbers(name, tmp_path):
    from safetensors.torch import load_file

    pin = PINNED[name]
    run = tmp_path / name
    summary = run_training(TrainConfig.from_dict({**BASE, **pin["config"], "out": str(run)}), progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == pytest.approx(pin["losses"], rel=1e-6)
    assert [r["lr"] for r in records] == pytest.approx(pin["lrs"], rel=1e-12)
    assert summary["val_loss"] == pytest.approx(pin["val_loss"], rel=1e-6)
    weights = sorted(load_file(run / "ckpt" / "step-000008" / "model.safetensors").items())
    assert [float(t.double().norm()) for _, t in weights] == pytest.approx(pin["norms"], rel=1e-6)
    if (torch.__version__, torch.backends.cpu.get_cpu_capability()) == RECORDED_ON:
        digest = hashlib.sha256()
        for key, t in weights:
            digest.update(key.encode())
            digest.update(t.numpy().tobytes())
        assert digest.hexdigest() in pin["sha256"]
