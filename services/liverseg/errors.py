"""Every error liverseg raises on purpose, and the one table that turns an error into an exit code.

Two families, and what each means for a person or a scheduler:

- the data is bad (``InputError``): pure imaging and ML code raises it with a message about the data (it does not
  know which case it works on); a stage edge adds the case and the file, sets the case aside and goes on;
- the work cannot be done now (``CannotRun`` and its kinds: the store, the archive, a missing upstream step,
  completed output that differs, the registry, the embedded store): exit 1, and the workflow's retry strategy
  tries again;
- the request is wrong (``UsageError`` and its kinds: a profile or override, the store settings, a data set folder,
  a command's arguments): exit 2, never retried, since a retry would only repeat it.

``exit_code`` is the only mapping from these to exit codes: stage commands, user commands and the workflows'
retry expression (exit 1 = transient) all rely on it.
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "ArchiveError", "CannotRun",
    "CaseFailed", "ConfigError", "ConflictError", "ContractError", "DatasetError", "EmbeddedStoreError", "InputError",
    "RegistryError", "SettingsError", "StageError", "StoreError", "UsageError", "exit_code",
]

EXIT_OK = 0
EXIT_FAILED = 1       # bad data for the whole command, or the work cannot be done now (retried by workflows)
EXIT_USAGE = 2        # bad usage or configuration (never retried)
EXIT_INTERNAL = 3     # a bug: an exception nobody raised on purpose (never retried)
EXIT_INTERRUPTED = 130


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


class CannotRun(RuntimeError):
    """The work cannot be done now; a later attempt may succeed (exit 1)."""


class StageError(CannotRun):
    """A stage cannot run at all: no plan, an upstream step not complete, nothing left to train on."""


class ConflictError(CannotRun):
    """Completed output exists for different inputs or parameters; it is never overwritten."""


class StoreError(CannotRun):
    """A store operation failed for good (after retries, or on a non-transient error)."""


class RegistryError(CannotRun):
    """The model registry cannot do what was asked (no such version, no champion, the champion moved)."""


class ArchiveError(CannotRun):
    """The DICOMweb archive (PACS) is unreachable, failing, or refuses the credentials (as the store: exit 1)."""


class EmbeddedStoreError(CannotRun):
    """The embedded store (``weed mini``) cannot be started, reached or stopped."""


class ContractError(RuntimeError):
    """A stage read or wrote objects its step in the stage graph does not declare: a bug in the stage (exit 3)."""


class UsageError(ValueError):
    """The request is wrong: arguments, settings or configuration (exit 2)."""


class ConfigError(UsageError):
    """The profiles file or an override is invalid."""


class SettingsError(UsageError):
    """The store settings are missing or malformed."""


class DatasetError(UsageError):
    """A data set folder cannot be ingested at all (no dataset.json, not JSON, nothing usable)."""


def exit_code(exc: BaseException) -> int:
    """The exit code of a command that stopped on ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, (InputError, CaseFailed, CannotRun)):
        return EXIT_FAILED
    if type(exc).__module__.split(".")[0] == "minio":
        return EXIT_FAILED  # the store answered with an error the client did not retry: as StoreError
    if isinstance(exc, ValueError):  # UsageError, and invalid ids or values found while parsing a request
        return EXIT_USAGE
    return EXIT_INTERNAL
