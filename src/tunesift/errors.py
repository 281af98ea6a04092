"""User-facing errors.

Every error a user can cause (bad input, a bad option, a model that cannot be found offline)
is a :class:`TunesiftError`. The CLI prints ``str(error)`` on one line and exits with code 2;
no traceback, and nothing is written.
"""

from __future__ import annotations


class TunesiftError(Exception):
    """An error the user can fix. Its message is one line that says what and where."""

    exit_code = 2


def located(path: object, reason: str, line: int | None = None, field: str | None = None) -> str:
    """``PATH[:LINE]: [field 'F': ]REASON``: how every input error names where it is."""
    where = f"{path}:{line}" if line is not None else str(path)
    return f"{where}: " + (f"field '{field}': " if field is not None else "") + reason


class InputError(TunesiftError):
    """A problem in an input file: the message names the file, the line or row, and the field."""

    def __init__(self, path: object, reason: str, *, line: int | None = None, field: str | None = None):
        super().__init__(located(path, reason, line, field))
        self.path, self.line, self.field, self.reason = str(path), line, field, reason


class RecordsError(InputError):
    """Records that cannot be used (defects found reading them, or too long for the model), as one
    line: the first in full (file, line, field), then how many and where the next few are."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None, reason: str | None = None):
        TunesiftError.__init__(self, message)
        self.path, self.line, self.field = path, line, field  # the first record's, when one file is named
        self.reason = message if reason is None else reason


class RecordTooLong(TunesiftError):
    """A record whose response cannot fit ``max_length`` (raised while rendering it). Its message
    names the record by id and line; a command that knows the file prefixes it (:meth:`in_file`)."""

    def in_file(self, path: object) -> TunesiftError:
        """The same error, its message starting with the file the record came from."""
        return TunesiftError(f"{path}: {self}")


class OptionError(TunesiftError, ValueError):
    """A bad command-line or API option (budget out of range, unknown method, ...). Also a
    ``ValueError``, as a bad argument is in Python: ``except ValueError`` catches it."""


class CacheError(TunesiftError):
    """The score cache cannot be used (not a folder, no permission, disk full, a folder where a
    block should be). The message names the path; a rerun with a usable --cache-dir resumes."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwinds like KeyboardInterrupt (temporary files are removed,
    nothing half-written is left) but is not swallowed by ``except Exception``."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def overflow_error(what: str, records, bad, dtype: str) -> TunesiftError:
    """The one-line error for scores that came out NaN or infinite: ``records[bad[0]]`` named by id
    and line, how many more, and the dtype whose forward pass overflowed (float16, say). Ranking such
    a record last, or caching it, would drop it unnoticed; with every record bad, the "selection"
    would be input order."""
    r = records[int(bad[0])]
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return TunesiftError(f"{what}: record {r.id} (line {r.line}){more} scored NaN or infinity in {dtype}: "
                         "the forward pass overflowed; use --dtype float32 or bfloat16")
