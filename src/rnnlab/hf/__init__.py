"""Hugging Face interoperability: rnnlab models as ``transformers`` causal LMs.

    rnnlab export --run runs/e1 --out hf/e1          # rnnlab.hf.export
    import rnnlab                                    # registers model type "rnnlab"
    model = AutoModelForCausalLM.from_pretrained("hf/e1")
    tok = AutoTokenizer.from_pretrained("hf/e1")     # bytes: id = byte value
    model.generate(**tok("The ", return_tensors="pt"), max_new_tokens=100)

``modeling``: ``RnnlabConfig``, ``RnnlabForCausalLM`` (generation through the layers' ``step``
with a ``RecurrentState`` cache); ``tokenizer``: the byte tokenizer; ``export``: run folder ->
``save_pretrained`` folder; ``cli``: ``rnnlab export``; ``lm_eval``: lm-eval-harness's command
with the model type registered.

This module itself imports nothing from ``transformers`` (an optional dependency, ``pip install
'rnnlab[hf]'``). ``import rnnlab`` runs ``register_auto_classes`` when ``transformers`` is
imported (a post-import hook; at once if it already is), and that does nothing where the
installed ``transformers`` is not a supported version.
"""

from __future__ import annotations

import sys

# The transformers versions this package is written and tested for (pyproject's [hf] extra).
TRANSFORMERS_VERSIONS = ">=5.24,<6"


def transformers_problem() -> str | None:
    """Why ``rnnlab.hf`` cannot run here (transformers missing or of another version), or None. A
    pre-release inside the range (``5.26.0.dev0``, transformers installed from git) is accepted."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("transformers")
    except PackageNotFoundError:
        return "transformers is not installed (pip install 'rnnlab[hf]')"
    from packaging.specifiers import SpecifierSet

    if not SpecifierSet(TRANSFORMERS_VERSIONS).contains(installed, prereleases=True):  # whatever packaging defaults to
        return (f"transformers {installed} is installed; rnnlab.hf needs transformers{TRANSFORMERS_VERSIONS} "
                "(pip install 'rnnlab[hf]')")
    return None


def register_auto_classes() -> bool:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` resolve model type ``rnnlab`` (the tokenizer
    needs no registration: it is a standard fast tokenizer). Returns False, registering nothing,
    where ``transformers_problem()`` names a problem."""
    if transformers_problem() is not None:
        return False
    modeling = sys.modules.get("rnnlab.hf.modeling")
    if modeling is not None and not hasattr(modeling, "RnnlabForCausalLM"):
        return False  # transformers is being imported by rnnlab.hf.modeling, which registers when done
    from transformers import AutoConfig, AutoModelForCausalLM

    from rnnlab.hf.modeling import RnnlabConfig, RnnlabForCausalLM

    AutoConfig.register(RnnlabConfig.model_type, RnnlabConfig, exist_ok=True)
    AutoModelForCausalLM.register(RnnlabConfig, RnnlabForCausalLM, exist_ok=True)
    return True
