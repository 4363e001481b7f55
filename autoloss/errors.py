"""One root exception for everything autoloss raises on bad input.

Every message says what was given, what was expected and how to fix it.
"""
from __future__ import annotations


class AutolossError(Exception):
    """Root of all autoloss errors."""


class ExpressionError(AutolossError, ValueError):
    """A malformed, hostile or unsupported expression."""


class CatalogError(AutolossError, ValueError):
    """A bad entry in a ``primitives/*.toml`` file (names file, entry and field)."""


class SignatureError(AutolossError, ValueError):
    """Inputs that do not match a loss signature (wrong shape, dtype, device)."""


class UnsupportedKindError(AutolossError, ValueError):
    """A loss of a kind (set-level, S) that a part of autoloss cannot handle yet."""


def require_kind(kind: str, by: str) -> None:
    """Refuse set-level (S) losses where only expressions go: an S loss is a hand-written
    function over the whole set (the zoo and the proxies call it; nothing compiles it)."""
    if kind == "S":
        raise UnsupportedKindError(
            f"set-level losses are hand-written functions over the whole batch, not "
            f"expressions; not supported by {by}")
    if kind not in ("E", "B"):
        raise UnsupportedKindError(f"{by}: kind must be 'E', 'B' or 'S', got {kind!r}")


def require_expression(spec, by: str) -> None:
    """Refuse a zoo entry that is not an expression where only expressions go: a set-level
    function (kind S, :func:`require_kind`'s message) or a hand-written batch-level module
    (kind B with an ``implementation``: running state or a sampling mask)."""
    require_kind(spec.kind, by)
    if spec.expression is None:
        raise UnsupportedKindError(
            f"{spec.id!r} is a hand-written batch-level module ({spec.implementation}: its "
            f"batch terms are running state or a sampling mask), not an expression; not "
            f"supported by {by}")


class UnknownNameError(AutolossError, KeyError):
    """An unknown zoo id, primitive, terminal or parameter."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, known) -> str:
    """A short hint listing the closest known names."""
    import difflib

    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3)
    if close:
        return "did you mean " + ", ".join(repr(c) for c in close) + "?"
    shown = ", ".join(known[:30]) + (", ..." if len(known) > 30 else "")
    return f"known: {shown}"
