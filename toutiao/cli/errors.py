"""Click exceptions carrying the documented exit codes, and the mapping to them."""
import re

import click

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock; try again later
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class ConfigError(click.ClickException):
    """Bad configuration (a malformed URL, a bad setting, missing tables): exit 2."""

    exit_code = EXIT_USAGE


class RuntimeFailure(click.ClickException):
    """The database or Redis failed, or a counter could not be repaired: exit 1."""

    exit_code = EXIT_FAILURE


class LockBusy(click.ClickException):
    """Another run holds the lock: exit 75."""

    exit_code = EXIT_LOCKED


class Stopped(click.ClickException):
    """SIGTERM or SIGINT stopped the run between batches: exit 143 or 130."""

    def __init__(self, message, signal_name):
        super().__init__(message)
        self.exit_code = EXIT_SIGINT if signal_name == "SIGINT" else EXIT_SIGTERM


def mask_url(url) -> str:
    """Hide the password of a URL so it can be printed and logged."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))
