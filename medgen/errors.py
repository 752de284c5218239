"""The one error type medgen's command line turns into a one-line message.

Raise :class:`MedgenError` (or a subclass) for anything a user can fix: a config value, a missing or
unreadable file, data that cannot be used. Its message is one sentence that says what was found and what
to do. ``medgen``'s entry point and the training launchers catch it once, print ``medgen: <message>`` and
exit with code 2; every other exception is a bug and keeps its traceback.

Running out of memory is recognised here too (:func:`is_out_of_memory`): the command line reports it in one
line, and :func:`out_of_memory_as` turns it into an :class:`OutOfMemoryError` that names what to lower.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class MedgenError(Exception):
    """A failure the user can fix; the message names the file or key, what was found and the fix."""

    exit_code = 2
    #: under torchrun, whether every rank prints it (False: rank 0 alone, for an outcome all ranks share)
    all_ranks = True
    #: what kind of problem, printed before the message (``medgen: config error: ...``); empty for none
    kind = ""

    def one_line(self) -> str:
        """``medgen: [kind: ]message``, what the command line prints."""
        return f"medgen: {self.kind + ': ' if self.kind else ''}{self}"


class InvalidValueError(MedgenError, ValueError):
    """An argument value medgen cannot use (a size, a count, a mask, an array shape)."""


class OutputExistsError(MedgenError, FileExistsError):
    """An output file already exists; medgen never overwrites results."""


class MissingInputError(MedgenError, FileNotFoundError):
    """An input file or folder that does not exist."""


class OutOfMemoryError(MedgenError):
    """Out of memory while working on one input; the message names the setting to lower."""

    kind = "out of memory"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is running out of memory: Python's ``MemoryError``, CUDA's ``OutOfMemoryError``, or the
    ``RuntimeError`` PyTorch's CPU allocator raises."""
    import torch  # here, not at the top: every module imports this one, and most never need torch

    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


@contextlib.contextmanager
def out_of_memory_as(message: str) -> Iterator[None]:
    """Inside it, running out of memory (:func:`is_out_of_memory`) raises :class:`OutOfMemoryError` with
    ``message`` instead; every other exception passes unchanged."""
    try:
        yield
    except Exception as exc:
        if is_out_of_memory(exc):
            raise OutOfMemoryError(message) from None
        raise
