"""Commands are declared next to their handlers, with usage and permission; /help is built from here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from bot.invocation import Invocation, Progress
from bot.replies import Reply

if TYPE_CHECKING:
    from bot.layer import CommandLayer

Handler = Callable[["CommandLayer", Invocation, Progress], Awaitable[list[Reply]]]


class Permission(StrEnum):
    EVERYONE = "everyone"
    CHAT_ADMIN = "chat admin"  # admins of the chat (anyone in a private chat)
    BOT_ADMIN = "bot admin"  # ANIBOT_ADMIN_IDS, or the Discord admin role


@dataclass(frozen=True)
class Command:
    name: str
    summary: str  # one line, shown in /help and in the platforms' command menus (Discord: <= 100 chars)
    usage: str  # e.g. "/recommend <title>"
    handler: Handler
    permission: Permission = Permission.EVERYONE
    takes_images: bool = False
    argument: str = ""  # the name of the free-text argument, for slash-command options ("" = none)


class CommandRegistry:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def command(
        self,
        name: str,
        *,
        summary: str,
        usage: str = "",
        permission: Permission = Permission.EVERYONE,
        takes_images: bool = False,
        argument: str = "",
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            if name in self._commands:
                raise ValueError(f"command /{name} declared twice")
            if len(summary) > 100:
                raise ValueError(f"/{name}: summary longer than Discord's 100 characters")
            self._commands[name] = Command(
                name, summary, usage or f"/{name}", handler, permission, takes_images, argument
            )
            return handler

        return register

    def get(self, name: str) -> Command | None:
        return self._commands.get(name.lower())

    def all(self) -> list[Command]:
        return list(self._commands.values())


class ButtonRegistry:
    """Button actions (``Button.action``) and their handlers; the payload reaches the handler as ``args``."""

    def __init__(self) -> None:
        self._actions: dict[str, Handler] = {}

    def action(self, name: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            if name in self._actions or ":" in name:
                raise ValueError(f"bad or duplicate button action {name!r}")
            self._actions[name] = handler
            return handler

        return register

    def get(self, name: str) -> Handler | None:
        return self._actions.get(name)


COMMANDS = CommandRegistry()
BUTTONS = ButtonRegistry()
# answers to a question the bot asked ("Wrong? Tell me who"): reached only through the user's next message, never
# through a button press, so no one answers a question they were not asked
ANSWERS = ButtonRegistry()
