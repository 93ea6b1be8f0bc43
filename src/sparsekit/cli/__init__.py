"""The `sparsekit` command line: one small module per command, each parsing its options, calling
its workflow (`sparsekit.workflows`) and rendering the result.

Bad input is one line on stderr and exit code 2, before anything slow starts: sparsekit's own
`UsageError`s, and the parser's errors (unknown option, bad value, missing argument, unknown
command) whatever exception classes the installed Typer/Click use. The app is built when
`main()` runs, so plug-ins registered before then show their options in ``--help``.
"""

import difflib
import re
import sys

import typer
from rich.text import Text

from sparsekit.cli import bench, calibrate, evaluate, export, info, prune
from sparsekit.cli.common import emit_json, err, out
from sparsekit.errors import UsageError
from sparsekit.signals import Terminated, install_signal_handlers
from sparsekit.version import __version__

__all__ = ["build_app", "main"]

COMMANDS = (info, evaluate, calibrate, prune, export, bench)   # each module has register(app)
HELP = "Post-training sparsification of large language models: calibrate, prune, evaluate, export."


def _version(value: bool) -> None:
    if value:
        out.print(f"sparsekit {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})

    @app.callback()
    def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit.")) -> None:
        """Post-training sparsification of large language models: calibrate, prune, evaluate, export."""

    for command in COMMANDS:
        command.register(app)
    return app


def _stopped(name: str, code: int) -> None:
    err.print(f"{name}: stopped before finishing; nothing was written (no partial output is left)")
    sys.exit(code)


def _click_exceptions() -> list:
    """The exceptions modules of the Click that Typer parses with (Typer >= 0.29 vendors its own,
    whose classes do not derive from click's) and of click itself when it is installed."""
    modules = [sys.modules[typer.BadParameter.__module__]]
    try:
        import click.exceptions
    except ImportError:
        return modules
    return modules if click.exceptions in modules else modules + [click.exceptions]


_CLICK = _click_exceptions()
USAGE_ERRORS = tuple(m.UsageError for m in _CLICK)          # bad option, value, argument or command
NO_ARGS = tuple(m.NoArgsIsHelpError for m in _CLICK if hasattr(m, "NoArgsIsHelpError"))
ABORTS = (KeyboardInterrupt, typer.Abort, *(m.Abort for m in _CLICK if hasattr(m, "Abort")))


def _suggestion(exc: BaseException, ctx) -> str:
    """"Did you mean ...?" for an unknown command, where the installed Click does not say it."""
    message = exc.format_message()
    unknown = re.match(r"No such command '([^']+)'", message)
    if unknown is None or "did you mean" in message.lower() or ctx is None:
        return ""
    close = difflib.get_close_matches(unknown.group(1), ctx.command.list_commands(ctx), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _given(exc: BaseException, args: list[str]) -> str:
    """The value given to the option a bad-value error is about, where the message omits it."""
    param = getattr(exc, "param", None)
    flags = [o for o in getattr(param, "opts", []) or [] if o.startswith("-")]
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in flags:
            value = value if eq else (args[i + 1] if i + 1 < len(args) else None)
            if value is not None and repr(value) not in exc.format_message() and value not in exc.format_message():
                return f" (got {value!r})"
    return ""


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _error(message: str, json_out: bool) -> None:
    if json_out:
        emit_json({"error": message, "exit_code": UsageError.exit_code})
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    sys.exit(UsageError.exit_code)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    json_out = "--json" in args
    install_signal_handlers()
    try:
        code = build_app()(args=args, prog_name="sparsekit", standalone_mode=False)
    except Terminated as exc:
        _stopped(f"terminated ({exc})", exc.code)
    except UsageError as exc:
        _error(str(exc), json_out)
    except ABORTS:
        _stopped("interrupted", 130)
    except USAGE_ERRORS as exc:
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, NO_ARGS):  # `sparsekit` alone: the help, as older Click shows it
            out.print(ctx.get_help() if ctx is not None else HELP, highlight=False, markup=False)
            sys.exit(0)
        _error(_one_line(exc.format_message()) + _suggestion(exc, ctx) + _given(exc, args)
               + (f" (see `{ctx.command_path} --help`)" if ctx is not None else ""), json_out)
    if code == 130:  # Click turns Ctrl-C into exit code 130
        _stopped("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)
