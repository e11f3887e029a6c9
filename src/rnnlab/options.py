"""Config fields that describe themselves: one declaration per field drives its command-line
flag, its type and range check, whether a resumed run may change it, and the suite/sweep key lists.

A config section is a plain dataclass whose fields are declared with ``option``::

    @dataclass
    class OptimConfig:
        lr: float = option(3e-4, help="peak learning rate", bounds=positive())

Every field has one flat ``key`` (its attribute name unless given): the name used by flags
(``--lr``), config files, ``config.json``, suite files and ``rnnlab sweep --set``. From the
declarations:

- ``check(section)`` type-checks every field (a bool is a bool, an int is not a float or a
  string, floats are finite) and applies ``choices`` / ``bounds``, raising
  ``ValueError("<key> must be <what>, got <value>")``;
- ``add_flags(group, cls)`` adds one argparse flag per field, and ``flag_values(args, cls)``
  reads them back, converting the text with the field's type and checking it (errors are
  ``ValueError`` too, so the CLI reports them as one line, naming the flag);
- ``specs(cls)`` lists the fields with their metadata (``resumable``, ``scope``) for the key
  lists other modules derive from them.

We wrote this (~300 lines) rather than use tyro or jsonargparse: those generate a whole parser
from the dataclasses, with nested names (``--optim.lr``) or their own parser class, while rnnlab
keeps its flat flag names, its argparse subcommands, ``--layer KEY=VALUE`` and its config-file
layering, and also needs the same metadata for validation messages and suite/sweep keys, which
neither library generates (docs/architecture.md, "One config source").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, Collection, Container


@dataclass(frozen=True)
class Bounds:
    """An interval ``lo..hi``; ``lo_open``/``hi_open`` exclude the end."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self, kind: str) -> str:
        """``kind`` is "integer" or "number"; e.g. "a positive integer (at most 65,536)"."""
        fin = "finite " if kind == "number" else ""
        if self.lo == 0 and self.lo_open and not self.hi_open:
            text = f"a positive {fin}{kind}"
        elif self.lo is not None and not self.lo_open and (self.hi is None or not self.hi_open):
            text = f"{'an' if kind == 'integer' else 'a'} {fin}{kind} >= {self.lo:g}"
        else:
            lo = "-inf" if self.lo is None else f"{self.lo:g}"
            hi = "inf" if self.hi is None else f"{self.hi:g}"
            return (f"{'an' if kind == 'integer' else 'a'} {kind} in {'(' if self.lo_open else '['}"
                    f"{lo}, {hi}{')' if self.hi_open else ']'}")
        return text + (f" (at most {self.hi:,})" if self.hi is not None else "")


def positive(hi: float | None = None) -> Bounds:
    return Bounds(lo=0, hi=hi, lo_open=True)


def at_least(lo: float, hi: float | None = None) -> Bounds:
    return Bounds(lo=lo, hi=hi)


@dataclass(frozen=True)
class Meta:
    """What a field says about itself (see ``option``)."""

    help: str
    choices: tuple | Callable[[], tuple] | None = None
    bounds: Bounds | None = None
    parse: Callable[[Any], Any] | None = None
    resumable: bool = False
    scope: str = "run"
    flag: bool = True
    key: str | None = None


def option(default: Any = MISSING, *, help: str, default_factory: Any = MISSING, **meta) -> Any:
    """A dataclass field with metadata:

    ``help`` (flag help), ``choices`` (a tuple, or a function returning one), ``bounds``
    (``Bounds``), ``parse`` (turns a raw value, from a flag's text or a file, into the field's
    type, e.g. "50M" -> 50_000_000), ``resumable`` (a resumed run may change it: it changes how
    long a run goes or what it records, never its trajectory), ``scope`` (who sets it in a suite
    or sweep: ``"run"``, each run and sweep point (default); ``"suite"``, one value for every run
    of a comparison, from the command line or the suite's defaults, never swept (the corpus, the
    budget, the device); ``"runner"``, the suite runner, per run folder), ``flag=False`` (no
    command-line flag), ``key`` (the flat name when not the attribute name).
    """
    return field(default=default, default_factory=default_factory, metadata={"option": Meta(help=help, **meta)})


@dataclass(frozen=True)
class Spec:
    """One field of a section: attribute ``name``, flat ``key``, resolved ``type``, ``meta`` and
    ``default`` (None when the field has a default factory)."""

    name: str
    key: str
    type: Any
    meta: Meta
    default: Any = None

    @property
    def choices(self) -> tuple | None:
        c = self.meta.choices
        return c() if callable(c) else c


def specs(cls: type) -> list[Spec]:
    """The ``option`` fields of the dataclass ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("option")
        if meta is not None:
            default = None if f.default is MISSING else f.default
            out.append(Spec(f.name, meta.key or f.name, hints[f.name], meta, default))
    return out


# ------------------------------------------------------------------------------------- checks
def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(tp, False)``."""
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _scalar_ok(tp: Any, v: Any) -> bool:
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return _is_int(v)
    if tp is float:
        return _is_number(v)
    if tp is str:
        return isinstance(v, str)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return v in typing.get_args(tp)
    if origin is dict or tp is dict:
        return isinstance(v, dict)
    return True  # a type this checker does not know: the section's own validate() decides


def describe(tp: Any, choices: tuple | None = None, bounds: Bounds | None = None) -> str:
    """What a value of this field must be, as the error message says it."""
    tp, _ = _unwrap(tp)
    if choices:
        return "one of " + ", ".join(str(c) for c in choices)
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        inner = describe(args[0], None, bounds).split(" ", 1)[1]  # "number in [0, 1)"
        count = {2: "two", 3: "three"}.get(len(args), str(len(args)))
        return f"{count} {inner.replace('number', 'numbers', 1)}"
    kind = {int: "integer", float: "number"}.get(tp)
    if kind is not None:
        return bounds.describe(kind) if bounds else f"{'an' if kind == 'integer' else 'a finite'} {kind}"
    return {bool: "true or false", str: "a string"}.get(tp, "a table of options" if tp is dict
                                                       or typing.get_origin(tp) is dict else str(tp))


def check_value(key: str, tp: Any, v: Any, choices: tuple | None = None, bounds: Bounds | None = None) -> None:
    """Raise ``ValueError("<key> must be <what>, got <v>")`` unless ``v`` fits."""
    base, optional = _unwrap(tp)
    if v is None and optional:
        return
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        ok = isinstance(v, (list, tuple)) and len(v) == len(args) and all(
            _scalar_ok(a, x) and (bounds is None or bounds.contains(x)) for a, x in zip(args, v))
    else:
        ok = v is not None and _scalar_ok(base, v) and (not choices or v in choices) and (
            bounds is None or bounds.contains(v))
    if not ok:
        raise ValueError(f"{key} must be {describe(tp, choices, bounds)}, got {_shown(base, v)}")


def _shown(tp: Any, v: Any) -> str:
    """A refused value as its error writes it: a number field's whole float as typed (``--lr 0``
    gives ``got 0``, not ``got 0.0``); a tuple field's values as a list, each so (``--betas 1 0.5``
    gives ``got [1, 0.5]``, not Python's ``(1.0, 0.5)``); any other value as Python writes it (an
    integer field's ``8.0`` stays ``8.0``: its type is the fault)."""
    if typing.get_origin(tp) is tuple and isinstance(v, (list, tuple)):
        return "[" + ", ".join(_shown(typing.get_args(tp)[0], x) for x in v) + "]"
    whole = tp is float and isinstance(v, float) and math.isfinite(v) and v.is_integer() and abs(v) < 2**53
    return str(int(v)) if whole else repr(v)


def check(section: Any) -> None:
    """Check every ``option`` field of a section instance against its declaration."""
    for s in specs(type(section)):
        check_value(s.key, s.type, getattr(section, s.name), s.choices, s.meta.bounds)


def normalize(spec: Spec, v: Any) -> Any:
    """A raw value (from a file or a flag) as the field stores it: the field's ``parse`` applied;
    a list for a tuple field becomes a tuple; an int for a float field becomes a float, and a
    whole float for an int field an int (a config file's ``tokens = 1e9``)."""
    if spec.meta.parse is not None:
        v = spec.meta.parse(v)
    base, _ = _unwrap(spec.type)
    if typing.get_origin(base) is tuple and isinstance(v, list):
        return tuple(v)
    if base is float and _is_int(v):
        return float(v)
    if base is int and isinstance(v, float) and v.is_integer():
        return int(v)
    return v


# ------------------------------------------------------------------------------------- flags
def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def parse_value(text: str) -> Any:
    """A value typed on the command line (``--layer``, ``rnnlab sweep --set``): JSON where it parses
    (numbers, ``null``, lists), ``true``/``false`` in any case, else the text itself (so a choice
    named ``none``, like E1's ``norm=none``, stays a string)."""
    text = text.strip()
    try:
        return json.loads(text.lower() if text.lower() in ("true", "false") else text)
    except json.JSONDecodeError:
        return text


def parse_key_values(items: list[str] | None) -> dict[str, Any]:
    """``["expansion=2.5", "spectral_norm=false"]`` -> ``{"expansion": 2.5, "spectral_norm": False}``
    (each value by :func:`parse_value`); a key given twice is refused, as in a config file."""
    out, given = {}, {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"option {item!r} must look like KEY=VALUE")
        if key in out:
            raise ValueError(f"option {key!r} is given twice ({given[key]!r} and {item!r})")
        out[key], given[key] = parse_value(value), item
    return out


def from_text(spec: Spec, text: Any) -> Any:
    """A flag's text as the field's value (``ValueError`` naming the field when it cannot be)."""
    base, _ = _unwrap(spec.type)
    if base is dict or typing.get_origin(base) is dict:
        return parse_key_values(text)  # its errors name the malformed item
    try:
        if spec.meta.parse is not None:
            return normalize(spec, text)
        if typing.get_origin(base) is tuple:
            return tuple(float(t) for t in text)
        if base in (int, float):
            value = base(text)
            return value if base is int or math.isfinite(value) else text  # the check names nan/inf
        return text
    except ValueError as e:
        if str(e).startswith(f"{spec.key} must be "):  # a parse function's own words for the field
            raise
        raise ValueError(f"{spec.key} must be {describe(spec.type, spec.choices, spec.meta.bounds)}, "
                         f"got {text!r}") from None


def checked(tp: type, bounds: Bounds | None = None) -> Callable[[str], Any]:
    """An argparse ``type=`` for a flag that is no config field (``rnnlab eval --batch-size``): the
    text as ``tp`` (int or float), checked like a field, so nan, inf and out-of-range values are
    refused with what the value must be."""
    def parse(text: str) -> Any:
        try:
            value = tp(text)
            check_value("value", tp, value, bounds=bounds)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {describe(tp, None, bounds)}, got {text!r}") from None
        return value

    return parse


def path_arg(text: str) -> str:
    """An argparse ``type=`` for a path argument that is no config field (``--run``, ``--out``,
    ``--config``): an empty one, as an unset shell variable gives, is refused rather than taken as
    ``Path("")``, the current folder (read whole, written into, or silently meaning "none"); so is
    one whose ``~`` no shell expanded (:func:`unexpanded_home`)."""
    if text == "":
        raise argparse.ArgumentTypeError("must be a path, got '' (an empty argument: an unset shell variable?)")
    if (home := unexpanded_home(text)) is not None:
        raise argparse.ArgumentTypeError(f"{text} starts with ~, {HOME_IS_THE_SHELLS}: write it as {home}")
    return text


HOME_IS_THE_SHELLS = "which only a shell expands, and not where it is quoted or follows --flag= or in a config file"


def unexpanded_home(path: str) -> str | None:
    """The home folder's path that ``path`` means where it begins with a ``~`` no shell expanded (``~/x``,
    ``~user/x``; quoted, after ``--flag=``, from a config file), else None (also where a path so named is
    there). Used as it is, ``--out '~/x'`` would make a folder named ``~`` in the current one."""
    home = os.path.expanduser(path)  # (Path.expanduser raises for an unknown ~user; this leaves it as it is)
    return home if path.startswith("~") and home != path and not os.path.exists(path) else None


def did_you_mean(unknown: list[Any], known: Collection[str], *, cutoff: float,
                 aliases: dict[str, str] | None = None) -> str:
    """``: did you mean lr?`` for the unknown keys (names of options or fields) that another tool's name
    for a known one (``aliases``: ``learning_rate`` -> ``lr``), or one spelt with a flag's dashes or
    nearly right (``d-state``, ``batchsize``: ``difflib`` at ``cutoff``), points to; "" for none. With
    several unknown keys, each is paired with its own (``a -> b``)."""
    return _hint(unknown, _meant(unknown, known, cutoff, aliases))


def unknown_keys_hint(unknown: list[Any], known: Collection[str], *, cutoff: float,
                      aliases: dict[str, str] | None = None) -> str:
    """What follows unknown keys in their error: :func:`did_you_mean`'s hint, and the known keys
    listed after it unless it names one for every unknown key (forty-odd fields would bury it)."""
    meant = _meant(unknown, known, cutoff, aliases)
    hint = _hint(unknown, meant)
    return hint if len(meant) == len(unknown) else f"{hint}; known: {sorted(known)}"


def _meant(unknown: list[Any], known: Collection[str], cutoff: float,
           aliases: dict[str, str] | None) -> list[tuple[str, str]]:
    """``(unknown key, the known key it means)`` for each unknown key that means one (``_near``)."""
    return [(k, m) for k in unknown if isinstance(k, str) and (m := _near(k, known, cutoff, aliases)) is not None]


def _hint(unknown: list[Any], meant: list[tuple[str, str]]) -> str:
    """``: did you mean b?`` (``a -> b, ...`` for several unknown keys), "" for none meant."""
    if not meant:
        return ""
    return ": did you mean " + ", ".join(m if len(unknown) == 1 else f"{k} -> {m}" for k, m in meant) + "?"


def _near(key: str, known: Collection[str], cutoff: float, aliases: dict[str, str] | None) -> str | None:
    """The known key that ``key`` means: another tool's name for it, or one nearly spelt so; else None."""
    import difflib

    if (aliases or {}).get(key) in known:
        return aliases[key]
    return next(iter(difflib.get_close_matches(key.replace("-", "_"), sorted(known), n=1, cutoff=cutoff)), None)


def add_flags(group, cls: type, keys: Container[str] | None = None, show_defaults: bool = True) -> None:
    """One flag per ``option`` field of ``cls`` (those in ``keys`` when given; not ``flag=False``)
    on the argparse ``group``; every flag defaults to None (= not given). ``show_defaults=False``:
    the help names no default (where something else, e.g. a suite, supplies the values)."""
    for s in specs(cls):
        if not s.meta.flag or (keys is not None and s.key not in keys):
            continue
        base, _ = _unwrap(s.type)
        kw: dict[str, Any] = {"dest": s.key, "default": None, "help": _help(s) if show_defaults else s.meta.help}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif base is dict or typing.get_origin(base) is dict:
            kw.update(action="append", metavar="KEY=VALUE")
        elif typing.get_origin(base) is tuple:
            n = len(typing.get_args(base))
            kw.update(nargs=n, metavar=tuple(f"{s.key.upper()}{i + 1}" for i in range(n)))
        else:
            kw["metavar"] = "{" + ",".join(map(str, s.choices)) + "}" if s.choices else s.key.upper()
        group.add_argument(flag_name(s.key), **kw)


def _help(s: Spec) -> str:
    """The field's help, plus its default when that is a plain number or word (and the help does
    not name the default itself)."""
    shown = (isinstance(s.default, (int, float, str)) and not isinstance(s.default, bool) and s.default != ""
             and "default" not in s.meta.help)
    return s.meta.help + (f" (default: {s.default})" if shown else "")


def flag_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags of ``cls``'s fields that were given, as ``{key: value}``: text converted and each value
    checked against its field's declaration as it is read, before any file or run folder is (its error
    names the field; the command line writes it as the flag typed, ``rnnlab.cli.named_by_flag``)."""
    out = {}
    for s in specs(cls):
        text = getattr(args, s.key, None)
        if text is None:
            continue
        value = text if isinstance(text, bool) else from_text(s, text)
        check_value(s.key, s.type, value, s.choices, s.meta.bounds)
        # a flag that parses to None ("--grad-clip 0": no clipping) keeps its text, parsed again
        # where it is applied: a None there would read as "not given" and leave a file's value
        out[s.key] = text if value is None else value
    return out
