"""lm-eval-harness's ``lm_eval`` command with rnnlab's model type registered.

    python -m rnnlab.hf.lm_eval --model hf --model_args pretrained=hf/e1 --tasks lambada_openai --batch_size 1

takes exactly ``lm_eval``'s arguments. The plain ``lm_eval`` command reads ``config.json``
through ``transformers.AutoConfig``, which knows model type ``rnnlab`` only after ``import
rnnlab`` (neither lm-eval nor transformers imports installed packages on its own), or with
``trust_remote_code=True`` through the folder's ``modeling_rnnlab.py`` (rnnlab.hf.export). This
module is that import and nothing more, so it needs no remote code. From Python,
``import rnnlab`` before ``lm_eval.simple_evaluate(model="hf", model_args="pretrained=...")``.

Install with ``pip install 'rnnlab[eval]'`` (lm-eval with its Hugging Face backend).
"""

import sys

import rnnlab  # noqa: F401  (registers model type "rnnlab" with transformers' Auto classes)
from rnnlab.hf import transformers_problem


def main() -> None:
    """lm-eval's command line, or one line (exit 2) saying what is missing: lm-eval, or a transformers
    that rnnlab registers with (``import rnnlab`` registers nothing under another version)."""
    problem = transformers_problem()
    try:
        from lm_eval.__main__ import cli_evaluate
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("lm_eval"):
            raise
        problem = "lm-eval is not installed (pip install 'rnnlab[eval]')"
    if problem is not None:
        print(f"python -m rnnlab.hf.lm_eval: {problem}", file=sys.stderr)
        sys.exit(2)
    cli_evaluate()


if __name__ == "__main__":
    main()
