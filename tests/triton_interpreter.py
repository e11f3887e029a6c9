"""A faster Triton interpreter for the CPU suite (tests/conftest.py applies it under
``TRITON_INTERPRET=1``): the interpreted kernels compute the same, with a quarter less overhead."""

from __future__ import annotations


def patch_the_language_once_per_launch() -> None:
    """Triton 3.6's interpreter swaps ``triton.language``'s builtins for interpreted ones when a
    kernel launches (``GridExecutor.__call__`` -> ``_patch_lang``, undone after the launch), and
    again at every call of a ``@triton.jit`` helper inside it (``InterpretedFunction.__call__``):
    ~0.2 ms of ``inspect.getmembers`` a call, which finds nothing left to swap (the builtins are
    already the interpreted ones) and sets the same language attributes again, a quarter of the
    interpreted kernel tests' time. Here a helper's call skips that when the running launch has
    already patched every language module the helper sees; otherwise it patches as Triton does.
    The kernels run the same interpreted operations either way (a builtin left unpatched would
    raise, not compute differently). Other Triton versions are left as they are."""
    try:
        import triton
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    if not triton.__version__.startswith("3.6.") or not hasattr(interpreter, "_patch_lang") or \
            not hasattr(interpreter, "GridExecutor"):  # a 3.6.x that moved them: leave Triton as it is
        return
    patch_lang, launch = interpreter._patch_lang, interpreter.GridExecutor.__call__
    patched: list[set | None] = []  # per running launch: the language modules patched for it

    def langs(fn) -> set:
        return {v for v in fn.__globals__.values() if v is tl or v is tl.core}  # as _patch_lang finds them

    def patch_once(fn):
        seen = langs(fn)  # none: Triton's own "triton.language must be visible" assertion, below
        if patched and patched[-1] is not None and seen and seen <= patched[-1]:
            return None  # a helper's call (its return value is dropped): already patched
        scope = patch_lang(fn)
        if patched:
            patched[-1] = (patched[-1] or set()) | seen
        return scope

    def launched(self, *args, **kwargs):
        patched.append(None)
        try:
            return launch(self, *args, **kwargs)
        finally:
            patched.pop()

    interpreter._patch_lang = patch_once
    interpreter.GridExecutor.__call__ = launched
