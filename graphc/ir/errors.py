"""Exceptions of graphc. Every one names the problem, the expected and the actual value."""


class GraphcError(Exception):
    """Base class of every error graphc raises on purpose."""


class ShapeError(GraphcError, ValueError):
    """An op was given operands whose shapes, dtypes or attributes its rule rejects."""


class VerifyError(GraphcError):
    """A graph broke an IR invariant; the message shows the offending node in context."""


class ParseError(GraphcError, ValueError):
    """The IR text could not be read; the message names the line."""
