"""The byte tokenizer of every exported model: token id = byte value, 256 tokens, no merges.

Built with the ``tokenizers`` library (a byte-level BPE whose vocabulary is the 256 bytes and
whose merge list is empty), so ``AutoTokenizer`` loads the saved ``tokenizer.json`` as a standard
fast tokenizer, with or without rnnlab installed (from an export's folder without ``import rnnlab``,
pass ``trust_remote_code=True``: its config.json's ``auto_map`` makes transformers ask before it reads
on). ``tokenizer(text).input_ids`` is exactly
``list(text.encode("utf-8"))``: no token is ever added.

Special tokens: the models were trained on raw byte streams with no document markers, so they
have none. Tools still ask for BOS/EOS/pad ids (lm-eval conditions a document's first byte on the
BOS, pads batches, and names an end-of-text), so all three name byte 0 (NUL), which text never
contains: padding with it is inert (pads only ever follow real bytes), ``decode(...,
skip_special_tokens=True)`` drops nothing but NUL, and a literal NUL in the input is still
encoded as the byte (``split_special_tokens``). The model config has no EOS, so ``generate``
runs for ``max_new_tokens`` like ``rnnlab sample``.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from rnnlab.hf.modeling import SPECIAL_BYTE


def byte_tokenizer(model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """The byte tokenizer; ``model_max_length`` (the training context) is what lm-eval uses as its
    window length when it is not told one."""
    byte_char = bytes_to_unicode()  # the printable stand-in byte-level BPE uses for each byte
    backend = Tokenizer(models.BPE(vocab={byte_char[b]: b for b in range(256)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    special = byte_char[SPECIAL_BYTE]
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=special, eos_token=special,
                                   pad_token=special, split_special_tokens=True, **extra)
