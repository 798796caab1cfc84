"""What every verb shares: exit codes, one-line errors, flag parsing, deprecated flag spellings.

Exit status of every verb (documented in ``spatialforge --help`` and README):

* 0: success.
* 1: the check ran and found images missing or unreadable (``check-images``; so a CI gate can
  tell "images missing" from a mistake in the command).
* 2: bad input: an option value, a file or folder that does not exist or cannot be read, malformed
  annotations, a model that cannot be found (also offline), a run folder of other inputs.

Every error is one line on stderr naming the flag, file or id (``spatialforge -v VERB`` shows the
traceback). Errors that are not the input's fault (bugs) keep their traceback.
"""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x parses with its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # older typer: click itself
    from click import ClickException

    NoArgsIsHelpError = ()  # type: ignore[assignment]

logger = logging.getLogger("spatialforge.cli")

EXIT_FAILED = 1  # the check ran and found images missing or unreadable
EXIT_USAGE = 2  # bad input: option values, files, annotations, models (what click uses for bad parameters)
EXIT_BAD_INPUT = EXIT_USAGE


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``Error: message`` (one line) on stderr and exit with ``code``."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def usage(option: str, message: str) -> NoReturn:
    """One line, like click's "Error: Invalid value for '--x': ...", without the usage block and
    without rich's multi-line panel (what typer.BadParameter prints when rich is installed)."""
    fail(f"Invalid value for {option!r}: {message}", EXIT_USAGE)


def parse_image_dirs(values: Sequence[str], option: str = "--image-dir") -> dict[str, str]:
    """``["objects365=/data/o365", ...]`` -> ``{"objects365": "/data/o365"}``; refuses a malformed
    value and a source given twice."""
    out: dict[str, str] = {}
    for value in values:
        source, sep, root = value.partition("=")
        if not sep or not source or not root:
            usage(option, f"{option} must look like SOURCE=DIR, got {value!r}")
        if source in out:
            usage(option, f"source {source!r} is given twice ({out[source]!r} and {root!r}); give one folder per source")
        out[source] = root
    return out


def split_list(value: str | None, option: str) -> tuple[str, ...] | None:
    """A comma-separated flag value as a tuple; an item listed twice is refused."""
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    twice = sorted({v for v in items if items.count(v) > 1})
    if twice:
        usage(option, f"{twice} listed more than once in {value!r}")
    return items


def deprecated(new: Any, old: Any, old_flag: str, new_flag: str) -> Any:
    """The value of a flag given under its old spelling (hidden, still accepted) or its new one."""
    if old is None or old == [] or old == ():
        return new
    if new not in (None, [], ()):
        usage(new_flag, f"give {new_flag} or its old spelling {old_flag}, not both")
    logger.warning("%s is deprecated, use %s", old_flag, new_flag)
    return old


def field_flag(message: str, fields: Sequence[str]) -> str | None:
    """The flag of the config field a message names first (``depth_kind must ...`` -> ``--depth-kind``)."""
    import re

    hits = [(m.start(), f) for f in fields for m in [re.search(rf"\b{re.escape(f)}\b(?!=)", message)] if m]
    return "--" + min(hits)[1].replace("_", "-") if hits else None


def expected_error(err: BaseException) -> str | None:
    """A one-line message for errors of the input or settings (bad annotations, missing files, a run
    folder of other inputs, an unwritable output, a model not found), or None for anything else (a
    bug: its traceback is shown)."""
    from ..executors.local import ShardFailed
    from ..readers import BadInputError

    prefix = ""
    if isinstance(err, ShardFailed) and err.__cause__ is not None:
        prefix, err = f"shard {err.shard}: ", err.__cause__
    if isinstance(err, (BadInputError, ValueError, FileNotFoundError)):
        text = str(err) or type(err).__name__
        return prefix + " ".join(text.split())
    if isinstance(err, ImportError) and "pip install 'spatialforge[" in str(err):  # a missing extra
        return prefix + str(err)
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.ENOTDIR,
                                                  errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.EDQUOT):
        where = f" {err.filename!r}" if err.filename else ""
        return prefix + f"{err.strerror or err}{where}"
    return None


class SpatialForgeGroup(TyperGroup):
    """The root command: every error of every verb (registered now or later) becomes one line and
    an exit status of this module; ``-v`` / ``--verbose`` shows the traceback instead."""

    def main(self, args: Sequence[str] | None = None, *a: Any, standalone_mode: bool = True, **kw: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        verbose = any(x in ("-v", "--verbose") for x in argv)
        try:
            rv = super().main(argv, *a, standalone_mode=False, **kw)
        except typer.Exit as e:  # raised before the command ran (e.g. --version)
            rv = e.exit_code
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            rv = 1
        except NoArgsIsHelpError as e:  # `spatialforge` alone: the help
            e.show()
            rv = e.exit_code
        except ClickException as e:  # usage errors of click itself: one line, no usage block
            hint = f" (see {e.ctx.command_path} --help)" if getattr(e, "ctx", None) is not None else ""
            typer.echo(f"Error: {e.format_message()}{hint}", err=True)
            rv = e.exit_code
        except Exception as err:
            message = expected_error(err)
            if message is None or verbose:
                raise
            typer.echo(f"Error: {message} (-v shows the traceback)", err=True)
            rv = EXIT_BAD_INPUT
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)
