"""The one error type medgen's command line turns into a one-line message.

Raise :class:`MedgenError` (or a subclass) for anything a user can fix: a config value, a missing or
unreadable file, data that cannot be used. Its message is one sentence that says what was found and what
to do. ``medgen``'s entry point and the training launchers catch it once, print ``medgen: <message>`` and
exit with code 2; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


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
