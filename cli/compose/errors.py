"""The one error type of compose: a one-line message and the exit code docker compose uses."""

from __future__ import annotations

from cli.client import CliError


class ComposeError(CliError):
    """A problem with the compose file or the project (exit 1 by default, like docker compose)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message, exit_code)
