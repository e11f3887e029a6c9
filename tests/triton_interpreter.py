"""A faster Triton interpreter for the CPU suite (tests/conftest.py applies it under
``TRITON_INTERPRET=1``): the interpreted kernels compute the same, with a quarter less overhead,
and a fifth less again without two of Triton 3.6's per-operation costs (``_np_dtype_from_a_table``,
``_tuple_type_names_when_read``)."""

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
    _np_dtype_from_a_table(interpreter, tl)
    _tuple_type_names_when_read(tl)


def _np_dtype_from_a_table(interpreter, tl) -> None:
    """The interpreter's ``_get_np_dtype`` (called by most interpreted operations) builds its
    dict of 19 Triton dtypes at every call. Its answer depends on the scalar type alone (a block
    type's is its element type's) and Triton's dtypes are equal exactly when their names are, so
    each scalar type's answer is looked up by name once computed by Triton's own function; a type
    it does not know still raises as it does (nothing is stored then)."""
    get_np_dtype, table = interpreter._get_np_dtype, {}

    def np_dtype(tt_dtype):
        scalar = tt_dtype.element_ty if isinstance(tt_dtype, tl.block_type) else tt_dtype
        name = getattr(scalar, "name", None)
        if not isinstance(name, str):
            return get_np_dtype(tt_dtype)
        if name not in table:
            table[name] = get_np_dtype(scalar)
        return table[name]

    interpreter._get_np_dtype = np_dtype


def _tuple_type_names_when_read(tl) -> None:
    """``tl.core.tuple_type`` formats its name (``[:<int32>,:<int32>]``) when it is made, for every
    shape of every interpreted tensor (millions in the kernel tests), though hardly any is read: the
    name is made the same way when it is read instead. The class has no subclass in Triton 3.6, and
    nothing sets a name on one (a property without a setter would raise, not differ)."""
    cls = tl.core.tuple_type

    def __init__(self, types, fields=None):
        self.types = types
        self.fields = fields or [''] * len(types)

    def name(self):
        return '[' + ','.join([f"{k}:{v}" for k, v in zip(self.fields, self.types)]) + ']'

    cls.__init__ = __init__
    cls.name = property(name)
