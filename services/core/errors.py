"""Errors that set a case aside, as opposed to errors that stop a stage.

Pure imaging and ML code raises ``InputError`` with a message about the data (it does not know which case it is
working on); the stage edge adds the case id and file, quarantines the case and goes on with the others.
"""

from __future__ import annotations


class InputError(ValueError):
    """The input data is unusable: the message says what is wrong, in one line, for a person."""

    def __init__(self, reason: str, *, file: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.file = file

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}" if self.file else self.reason


class CaseFailed(RuntimeError):
    """A case was set aside; carries the case id, the file at fault (if one) and the reason."""

    def __init__(self, case: str, reason: str, file: str | None = None):
        where = f" ({file})" if file else ""
        super().__init__(f"case {case}{where}: {reason}")
        self.case = case
        self.reason = reason
        self.file = file


class ConflictError(RuntimeError):
    """Completed output exists for different inputs or parameters; it is never overwritten."""
