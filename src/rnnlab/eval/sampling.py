"""Text generation by stepping the model one byte at a time.

``generate`` (and ``stream``, the same bytes one at a time) uses ``LM.init_state`` / ``LM.step``:
recurrent layers carry a fixed-size state, so memory stays constant however long the text
(attention grows its key/value cache). The prompt is fed byte by byte through ``step``; then each
new byte is sampled from the last logits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn


def generate(model: nn.Module, prompt: bytes | str, n_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0) -> bytes:
    """``n_tokens`` new bytes continuing ``prompt`` (a ``str`` is taken as its UTF-8 bytes; the
    prompt itself is not returned).

    ``temperature=0`` is greedy; ``top_k`` keeps the k most likely bytes (None/0 = all).
    Deterministic for a fixed ``seed`` on a given device.
    """
    return b"".join(stream(model, prompt, n_tokens, temperature, top_k, seed))


def stream(model: nn.Module, prompt: bytes | str, n_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, seed: int = 0) -> Iterator[bytes]:
    """``generate``'s bytes one at a time, each as soon as it is sampled (``rnnlab sample`` prints
    them so); the arguments are checked here, before the first byte is asked for. The model is in
    eval mode from the first byte until the stream is exhausted or closed (``close()``, or the
    end of a ``for`` loop over it), then back in its mode before."""
    if isinstance(prompt, str):
        prompt = prompt.encode("utf-8")
    if not prompt:
        raise ValueError("prompt must be at least one byte")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
        raise ValueError(f"n_tokens must be an integer >= 0, got {n_tokens!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    return _stream(model, prompt, n_tokens, temperature, top_k, seed)


@torch.no_grad()  # on a generator: grad mode is off while it runs, not while its consumer does
def _stream(model: nn.Module, prompt: bytes, n_tokens: int, temperature: float, top_k: int | None,
            seed: int) -> Iterator[bytes]:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    try:
        state = model.init_state(1)
        logits = None
        for b in prompt:
            logits, state = model.step(torch.tensor([b], device=device, dtype=torch.long), state)
        for i in range(n_tokens):
            nxt = _pick(logits[0].float(), temperature, top_k, gen)
            yield bytes((nxt,))
            if i + 1 < n_tokens:
                logits, state = model.step(torch.tensor([nxt], device=device, dtype=torch.long), state)
    finally:
        model.train(was_training)


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, gen: torch.Generator) -> int:
    # 0, or a temperature that is 0 in the logits' precision (1e-300 in float32): greedy
    if temperature == 0 or torch.tensor(temperature, dtype=logits.dtype) == 0:
        return int(logits.argmax())
    scaled = logits / temperature
    # a temperature so small that the largest logit overflows (to +inf, or to -inf when it is
    # negative): from the max down
    if not torch.isfinite(scaled.max()):
        scaled = (logits - logits.max()) / temperature
    if top_k:  # the k most likely of the logits themselves: over a huge temperature (1e39) every one is 0, a tie
        k = min(int(top_k), logits.numel())
        kth = torch.topk(logits, k).values[-1]
        scaled = scaled.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))
