"""The `lmtune` command: subcommands follow the workflow (prepare -> train -> eval -> use -> serve). Each verb
maps thinly onto a library function; train.py, use.py and deploy.py hold them, in the order --help lists."""

from __future__ import annotations

import logging
import os
import sys

import typer

# Importing registers the verbs, in the order --help lists them.
# isort: off
from lmtune.cli import train  # noqa: F401
from lmtune.cli import use  # noqa: F401
from lmtune.cli import deploy  # noqa: F401

# isort: on
from lmtune.cli.app import app
from lmtune.errors import LmtuneError
from lmtune.libraries import quiet_libraries

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import ClickException

__all__ = ["app", "main"]


def main() -> None:
    logging.basicConfig(level=os.environ.get("LMTUNE_LOG", "INFO"), format="%(message)s")
    quiet_libraries()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into exit status 130 and says nothing
            _fail("interrupted", 130)
        sys.exit(code or 0)
    except ClickException as err:  # a bad option or argument: one line, like every other error
        where = f" (see {err.ctx.command_path} --help)" if getattr(err, "ctx", None) else ""
        _fail(f"{err.format_message()}{where}", 2)
    except LmtuneError as err:
        _fail(str(err), err.exit_code)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        _fail(f"{err.strerror}: {err.filename}" if err.filename else str(err), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except typer.Abort as err:  # typer's wrapping of an EOFError (e.g. from a truncated compressed file)
        cause = err.__cause__
        _fail(f"{type(cause).__name__}: {cause}" if cause else "aborted", 1)
    except Exception as err:  # the last resort: one line, full trace only on request
        if os.environ.get("LMTUNE_DEBUG"):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        _fail(f"{type(err).__name__}: {first} (set LMTUNE_DEBUG=1 for the traceback)", 1)


def _fail(message: str, code: int) -> None:
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
