"""The package layout stays a one-way street: no import circle between rnnlab's packages, and none
between the modules of one package (imports inside functions count too); and the repository's
index of its measurements, ``results/README.md``, lists what ``results/`` holds, and every test the
docs cite, every file of code they name and every command option they give, exists."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

import rnnlab

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention

ROOT = Path(rnnlab.__file__).parent
REPO = Path(__file__).resolve().parents[1]


def _docs() -> list[Path]:
    """The pages that cite tests, code and results: README.md, docs/ and the results READMEs."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "results").glob("*/README.md"))]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _imports() -> dict[str, set[str]]:
    """``{module: rnnlab modules it imports}``, from every import statement in its source."""
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rnnlab"):
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("rnnlab")}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, or None."""
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_no_import_circle_between_packages():
    packages: dict[str, set[str]] = {}
    for module, deps in _imports().items():
        packages.setdefault(_package(module), set()).update(
            _package(d) for d in deps if _package(d) != _package(module) and d.count("."))
    assert _cycle(packages) is None, _cycle(packages)


@pytest.mark.parametrize("package", sorted({_package(m) for m in _imports() if m.count(".") > 1}))
def test_no_import_circle_inside_a_package(package):
    """Between the modules of one package (its ``__init__`` left out: it may gather them)."""
    inside = f"rnnlab.{package}."
    graph = {m: {d for d in deps if d.startswith(inside)} for m, deps in _imports().items() if m.startswith(inside)}
    assert _cycle(graph) is None, _cycle(graph)


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_results_folder_is_in_the_results_index():
    """``results/README.md`` is the index of the measurements the docs cite: a folder (or file)
    added to ``results/`` without a line there would be found only by a grep, and a line naming
    what is not there misleads."""
    import re

    results = REPO / "results"
    there = {p.name for p in results.iterdir()} - {"README.md"}
    listed = {name for line in (results / "README.md").read_text().splitlines() if line.startswith("| `")
              for name in re.findall(r"`([^`]+)`", line.split(" | ")[0])}
    assert not there - listed, f"add to results/README.md: {sorted(there - listed)}"
    assert not listed - there, f"results/README.md lists what results/ does not hold: {sorted(listed - there)}"


def test_every_test_the_docs_cite_exists():
    """README.md, docs/ and the results READMEs cite tests as proof (docs/reliability.md's
    guarantees above all): ``tests/FILE.py::test_name``, and ``::test_name`` for another test of the file
    named last. A test renamed or removed leaves the proof pointing at nothing."""
    import re

    missing = []
    for doc in _docs():
        current = None
        for m in re.finditer(r"(tests/[\w/]+\.py)|::(test_\w+)", doc.read_text()):
            if m.group(1):
                current = m.group(1)
                if not (REPO / current).exists():
                    missing.append(f"{doc.name}: {current}")
            elif current and (REPO / current).exists() and \
                    not re.search(rf"^\s*def {m.group(2)}\(", (REPO / current).read_text(), re.M):
                missing.append(f"{doc.name}: {current}::{m.group(2)}")
    assert not missing, missing


def test_every_source_file_the_docs_cite_exists():
    """A path to code in README.md, docs/ or a results README (``src/rnnlab/...``, ``rnnlab/...``,
    a package-relative ``ops/elman/heads.py``, ``benchmarks/...``, ``scripts/...``) names a file
    that exists: a file moved or removed leaves no doc pointing at it."""
    import re

    packages = "|".join(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())
    path = re.compile(rf"`((?:src/)?rnnlab/[\w/]+|(?:{packages})/[\w/]+|(?:benchmarks|scripts)/[\w/.-]+)"
                      r"\.(py|sh|cu|cuh|toml)`")
    missing = sorted({f"{doc.name}: {m.group(1)}.{m.group(2)}" for doc in _docs() for m in path.finditer(doc.read_text())
                      if not any((base / f"{m.group(1)}.{m.group(2)}").exists()
                                 for base in (REPO, REPO / "src", ROOT))})
    assert not missing, missing


def _command_options() -> dict[str, set[str]]:
    """Each command's options, from ``rnnlab``'s own parser: ``{"train": {"--steps", ...},
    "analyze gradflow": {...}, ...}``."""
    import argparse

    from rnnlab.cli import build_parser

    def walk(parser, command=""):
        found = {command: {o for a in parser._actions for o in a.option_strings}}
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    found.update(walk(sub, f"{command} {name}".strip()))
        return found

    return walk(build_parser())


def _script_options() -> dict[str, set[str]]:
    """Each ``benchmarks/*.py``'s options, read from its ``add_argument`` calls (importing the
    scripts would need a GPU's packages): ``{"bench_models.py": {"--only", ...}, ...}``."""
    import re

    declared = re.compile(r"""add_argument\(\s*(?:"-\w",\s*)?["'](--[a-z][a-z0-9-]*)["']""")
    return {f.name: {"--help", *declared.findall(f.read_text())} for f in (REPO / "benchmarks").glob("*.py")}


def _unknown_options(text: str, program: str, options: dict[str, set[str]]) -> list[str]:
    """``COMMAND --flag`` for each option that a command line in ``text`` gives a command that
    lacks it. ``program`` is a regex whose group 1 is the command (``rnnlab (train)``; of ``rnnlab
    analyze gradflow`` the longest words ``options`` knows); its line runs to the end of its code
    span, a pipe, a ``;``, a ``$(`` or a shell comment."""
    import re

    unknown = []
    for m in re.finditer(program + r"((?:(?!\s#|\$\()[^`|;&)\n])*)", text):
        command = m.group(1) if m.group(1) in options else m.group(1).split()[0]
        if command in options:
            unknown += [f"{command} {flag}" for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2))
                        if flag not in options[command]]
    return unknown


RNNLAB = r"\brnnlab ([a-z][a-z-]*(?: [a-z][a-z-]*)?)"
SCRIPT = r"\bbenchmarks/([\w-]+\.py)"


def test_every_option_the_docs_give_a_command_exists():
    """A command line in README.md, docs/ or a results README gives only options its command
    takes: an option renamed or removed leaves no page telling a reader to type it."""
    options = _command_options()
    assert _unknown_options("`rnnlab train --steps 3 --stepz 3`, `rnnlab analyze gradflow RUN --last 2 --steps 1`\n"
                            "rnnlab layers   # its --layer options\n`rnnlab train --steps#3 --stepz`", RNNLAB,
                            options) == ["train --stepz", "analyze gradflow --steps", "train --stepz"]
    unknown = sorted({f"{doc.name}: {u}" for doc in _docs() for u in _unknown_options(doc.read_text(), RNNLAB, options)})
    assert not unknown, unknown


def test_every_option_the_docs_give_a_benchmark_script_exists():
    """The same for ``benchmarks/*.py`` command lines in README.md and docs/. The results READMEs
    are left out here: their benchmark command lines record the script of the commit each names
    (``bench_models.py --all`` of eab7a25), while ``rnnlab``'s flags have held since."""
    options = _script_options()
    assert _unknown_options("`benchmarks/bench_models.py --only E1 --onyl E1 --commit $(git rev-parse --short HEAD)`\n"
                            "benchmarks/bench_kernels.py --sections heads  # --not-a-flag", SCRIPT, options) == \
        ["bench_models.py --onyl"]
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    unknown = sorted({f"{doc.name}: {u}" for doc in pages for u in _unknown_options(doc.read_text(), SCRIPT, options)})
    assert not unknown, unknown


def test_every_file_the_package_reads_is_in_its_package_data():
    """A wheel (a non-editable install) holds every non-Python file under ``src/rnnlab``: the CUDA
    sources the kernels build from on first use (``wgmma.cu`` includes ``sm90.cuh``: without it the
    Hopper build fails and the slower kernel runs), the shipped sample corpus and the suites.
    ``pyproject.toml``'s package-data globs are what setuptools copies."""
    import subprocess
    import tomllib
    from pathlib import PurePosixPath

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rnnlab"]
    tracked = subprocess.run(["git", "ls-files", "src/rnnlab"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout: the package's files are not known from here")
    files = [f.removeprefix("src/rnnlab/") for f in tracked.stdout.splitlines() if not f.endswith(".py")]

    def covered(f: str) -> bool:  # setuptools' glob: a * stays within one folder
        return any(len(PurePosixPath(f).parts) == len(PurePosixPath(g).parts) and PurePosixPath(f).match(g)
                   for g in globs)

    left_out = [f for f in files if not covered(f)]
    assert files and not left_out, f"not in pyproject.toml's package-data: {left_out}"
