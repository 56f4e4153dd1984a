"""Click exceptions carrying the documented exit codes, and the mapping to them."""

from contextlib import contextmanager

import click

from toutiao.config import SettingError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds a lease; try again later
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class ConfigError(click.ClickException):
    """Bad configuration (a malformed URL, a bad setting, missing tables): exit 2."""

    exit_code = EXIT_USAGE


class RuntimeFailure(click.ClickException):
    """The database or Redis failed, or a counter could not be repaired: exit 1."""

    exit_code = EXIT_FAILURE


class LockBusy(click.ClickException):
    """Another run holds a lease this run needs: exit 75."""

    exit_code = EXIT_LOCKED


class Stopped(click.ClickException):
    """SIGTERM or SIGINT stopped the run between batches: exit 143 or 130."""

    def __init__(self, message, signal_name):
        super().__init__(message)
        self.exit_code = EXIT_SIGINT if signal_name == "SIGINT" else EXIT_SIGTERM


@contextmanager
def settings_checked():
    """Turn a SettingError raised in the block into a ConfigError (exit 2) with its message."""
    try:
        yield
    except SettingError as exc:
        raise ConfigError(str(exc)) from None


def exit_status(exc: BaseException) -> tuple:
    """Return the exit status a command ends with when ``exc`` escapes it, and its message."""
    if isinstance(exc, click.ClickException):
        return exc.exit_code, exc.format_message()
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code, ""
    if isinstance(exc, SystemExit):
        return (exc.code if isinstance(exc.code, int) else EXIT_FAILURE), ""
    if isinstance(exc, (KeyboardInterrupt, click.Abort)):
        return EXIT_SIGINT, "interrupted"
    if isinstance(exc, SettingError):
        return EXIT_USAGE, str(exc)
    return EXIT_FAILURE, f"{type(exc).__name__}: {exc}"


# A URL in free text: a scheme, then everything up to whitespace, a quote or an angle bracket.
