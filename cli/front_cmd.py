"""``anibot bot discord|telegram`` and ``anibot api``: the front-end processes (no model library is imported)."""

from __future__ import annotations

import importlib
import logging
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console

from cli.extras import exit_for_missing_extra
from core.logs import configure_logging
from core.settings import get_settings

console = Console(stderr=True)
log = logging.getLogger("anibot.front")


class Platform(StrEnum):
    DISCORD = "discord"
    TELEGRAM = "telegram"


# each front-end's module, with ``run(settings)``
FRONT_ENDS = {
    Platform.DISCORD: "bot.discord.app",
    Platform.TELEGRAM: "bot.telegram.app",
    "api": "bot.api.app",
}
TOKENS = {
    Platform.DISCORD: ("discord_token", "ANIBOT_DISCORD_TOKEN"),
    Platform.TELEGRAM: ("telegram_token", "ANIBOT_TELEGRAM_TOKEN"),
}


def _run(front_end: str) -> None:
    """Start ``front_end``; a failure to start (a refused token, a bad base URL, a port in use) is logged through
    the redacting formatter, so no token reaches the terminal, and the process exits 1."""
    settings = get_settings()
    configure_logging(settings)
    command = "api" if front_end == "api" else f"bot {front_end}"
    try:
        module = importlib.import_module(FRONT_ENDS[front_end])
    except ImportError as exc:
        exit_for_missing_extra(exc, command)
        raise
    try:
        module.run(settings)
    except (KeyboardInterrupt, SystemExit, typer.Exit):
        raise
    except ImportError as exc:
        exit_for_missing_extra(exc, command)
        raise
    except Exception as exc:
        log.critical("anibot %s stopped: %s: %s", command, type(exc).__name__, exc, exc_info=True)
        raise typer.Exit(1) from None


def bot(platform: Annotated[Platform, typer.Argument(help="discord or telegram")]) -> None:
    """Run the Discord or Telegram bot (it enqueues work for `anibot worker` processes)."""
    field, variable = TOKENS[platform]
    if getattr(get_settings(), field) is None:
        console.print(f"[red]No {platform.value} token: set {variable} (environment or .env).[/red]")
        raise typer.Exit(2)
    _run(platform)


def api(
    host: Annotated[str | None, typer.Option(help="Address to listen on (ANIBOT_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (ANIBOT_API_PORT).")] = None,
) -> None:
    """Run the REST API: POST /v1/analyze, GET /v1/jobs/{id}, GET /v1/recommend; OpenAPI at /v1/openapi.json."""
    import os

    if host:
        os.environ["ANIBOT_API_HOST"] = host
    if port:
        os.environ["ANIBOT_API_PORT"] = str(port)
    get_settings.cache_clear()
    _run("api")
