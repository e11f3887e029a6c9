"""rnnlab: recurrent byte-level language models (E1 gated Elman, E16, E88, minGRU, minLSTM, Mamba2,
Gated DeltaNet, Transformer) trained on one seeded data stream and compared side by side.

Layout (imports run one way: data, options, signals -> ops -> layers -> models -> eval -> train -> bench
-> analysis -> cli; hf wraps models; docs/architecture.md):
  rnnlab.data      byte corpora (memory-mapped) and the seeded batch stream
  rnnlab.ops       recurrence kernels: a pure-PyTorch reference (naive.py) beside each GPU kernel
  rnnlab.layers    nn.Module mixers with one contract (forward / init_state / step)
  rnnlab.models    ModelConfig, the LM, the model registry and parameter matching
  rnnlab.train     config (one source: flags, checks), Trainer, run folder, optimizers, checkpoints,
                   metrics, distributed
  rnnlab.eval      held-out bits per byte and sampling
  rnnlab.bench     benchmark suites, sweeps, reports and plots
  rnnlab.analysis  gradient-flow analysis
  rnnlab.hf        Hugging Face models (export, Auto classes, generate) and lm-eval-harness
  rnnlab.options   config fields that describe themselves (flags, checks, key lists)
  rnnlab.signals   SIGTERM and SIGHUP taken as a Ctrl-C (a run saves before it ends)
  rnnlab.cli       the `rnnlab` command
"""

__version__ = "0.1.0"


# `import rnnlab` lets transformers' Auto classes load exported rnnlab models (model type
# "rnnlab", see rnnlab.hf). The classes register when transformers is imported (at once if it
# already is), so a process that never uses transformers does not pay ~2 s to import it.
import wrapt  # noqa: E402

from rnnlab.hf import register_auto_classes as _register_auto_classes  # noqa: E402

wrapt.register_post_import_hook(lambda transformers: _register_auto_classes(), "transformers")
