"""The platform-neutral command layer: every front-end (Discord, Telegram, REST) calls these few methods.

A front-end turns its platform's event into an :class:`Invocation`, calls one method, and renders the
:class:`Reply` objects it gets back. Nothing here knows a platform SDK, and nothing here imports a model
library: work goes to the queue.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

from bot.invocation import Invocation, Progress, no_progress
from bot.outage import UNREACHABLE_ERRORS, unreachable_reply
from bot.registry import ANSWERS, BUTTONS, COMMANDS, ButtonRegistry, Command, CommandRegistry, Permission
from bot.replies import Button, Reply, ReplyKind, rate_limited, refusal
from bot.waiting import JobWaiter
from core.chat.ratelimit import ActiveJobs, BucketRule, TokenBuckets
from core.chat.store import ChatStore
from core.settings import Settings
from core.storage.kv import RedisKV
from core.storage.store import Store
from workers.client import QueueClient, QueueFull

log = logging.getLogger(__name__)

PENDING_PREFIX = "anibot:pending:"  # a question the bot asked a user ("Wrong? Tell me who"), by chat and user
PENDING_TTL_S = 600


def new_error_id() -> str:
    return uuid.uuid4().hex[:8]


def error_reply(error_id: str) -> Reply:
    return Reply(
        kind=ReplyKind.ERROR,
        text=f"Sorry, something went wrong on my side. If it keeps happening, tell an admin: error {error_id}.",
        error_id=error_id,
    )


class CommandLayer:
    def __init__(
        self,
        settings: Settings,
        client: QueueClient,
        store: Store,
        *,
        commands: CommandRegistry = COMMANDS,
        buttons: ButtonRegistry = BUTTONS,
        answers: ButtonRegistry = ANSWERS,
    ) -> None:
        import bot.commands  # noqa: F401  (registers every command and button on the registries)

        self.settings = settings
        self.client = client
        self.store = store
        self.chats = ChatStore(store)
        self.commands = commands
        self.buttons = buttons
        self.answers = answers
        redis_client = client.kv.client
        self.buckets = TokenBuckets(redis_client)
        self.active = ActiveJobs(redis_client, ttl_s=int(settings.job_wait_timeout_s) + 60)
        self.waiter = JobWaiter(
            client, unavailable_after_s=settings.unavailable_after_s, timeout_s=settings.job_wait_timeout_s
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> CommandLayer:
        store = Store.from_settings(settings)
        store.create_all()
        return cls(settings, QueueClient(settings), store)

    @property
    def kv(self) -> RedisKV:
        return self.client.kv

    # --- the entry points front-ends call ----------------------------------------------------------------

    async def command(self, inv: Invocation, name: str, progress: Progress = no_progress) -> list[Reply]:
        """``/name args`` from ``inv``: permission-checked, then run; never raises."""
        spec = self.commands.get(name)
        if spec is None:
            return [refusal(f"I don't know /{name}. /help lists what I can do.", "unknown_command")]
        denied = self.denied(spec, inv)
        if denied is not None:
            return [denied]
        run = lambda: spec.handler(self, inv, progress)  # noqa: E731
        if not spec.takes_images:  # pictures have their own buckets (per user and per chat, a token each)
            run = self.throttled(inv, run)
        return await self.guarded(inv, f"/{spec.name}", run)

    async def images(
        self, inv: Invocation, progress: Progress = no_progress, *, explicit: bool
    ) -> list[Reply]:
        """Images posted: ``explicit`` when the user asked (mention, reply, /identify, context menu); otherwise
        answered only where the chat has auto-analysis on (an empty list means: stay quiet)."""
        if not await self.answers_images(inv, explicit=explicit):
            return []
        spec = self.commands.get("identify")
        assert spec is not None
        return await self.guarded(inv, "images", lambda: spec.handler(self, inv, progress))

    async def answers_images(self, inv: Invocation, *, explicit: bool) -> bool:
        """Whether :meth:`images` will answer: asked for, or auto-analysis is on in this chat (front-ends use it
        to acknowledge at once only what will be answered)."""
        if explicit:
            return True
        chat = await self.chat_settings(inv)
        return chat.auto_analyze_in(inv.chat_kind)

    async def button(self, inv: Invocation, data: str, progress: Progress = no_progress) -> list[Reply]:
        action, payload = Button.parse(data)
        handler = self.buttons.get(action)
        if handler is None:
            return [refusal("That button no longer works.", "expired")]
        pressed = replace(inv, args=payload)
        return await self.guarded(
            inv, f"button {action}", self.throttled(inv, lambda: handler(self, pressed, progress))
        )

    async def text(self, inv: Invocation) -> list[Reply]:
        """A plain message: the answer to a question the bot asked this user here, if any (else nothing)."""
        key = self.pending_key(inv)
        pending = await self.run_sync(self.kv.get, key)
        if pending is None:
            return []
        await self.run_sync(self.kv.delete, key)
        action, payload = Button.parse(pending.decode())
        handler = self.answers.get(action)  # apart from the buttons: a press cannot skip the question
        if handler is None:
            return []
        answered = replace(inv, args=f"{payload} {inv.args}")
        return await self.guarded(inv, f"answer {action}", lambda: handler(self, answered, no_progress))

    # --- helpers for command handlers ----------------------------------------------------------------------

    def throttled(
        self, inv: Invocation, run: Callable[[], Awaitable[list[Reply]]]
    ) -> Callable[[], Awaitable[list[Reply]]]:
        """``run`` behind the user's command bucket (``ANIBOT_RATE_COMMAND_PER_MIN`` / ``_BURST``): catalogue
        commands, buttons and the REST API's routes over them cost one token each; bot admins are not limited."""

        async def limited() -> list[Reply]:
            if self.is_bot_admin(
                inv
            ):  # trusted, and their review and teaching sessions are many presses long
                return await run()
            rule = BucketRule(self.settings.rate_command_per_min, self.settings.rate_command_burst)
            decision = await self.run_sync(self.buckets.take, f"cmd:{inv.platform}:{inv.user_id}", rule)
            if not decision.allowed:
                log.info("commands rate limited (%s)", inv.where())
                text = f"Slow down: too many commands. Try again in {decision.retry_after_text}."
                return [rate_limited(text, decision.retry_after_s)]
            return await run()

        return limited

    def is_bot_admin(self, inv: Invocation) -> bool:
        return self.settings.is_admin(inv.platform, inv.user_id) or inv.has_admin_role

    def denied(self, spec: Command, inv: Invocation) -> Reply | None:
        if spec.permission is Permission.BOT_ADMIN and not self.is_bot_admin(inv):
            log.warning("refused /%s to a non-admin (%s)", spec.name, inv.where())
            return refusal(f"/{spec.name} is for bot admins only.", "forbidden")
        if spec.permission is Permission.CHAT_ADMIN and not inv.may_change_chat_settings:
            log.warning("refused /%s to a non-chat-admin (%s)", spec.name, inv.where())
            return refusal(f"Only this chat's admins can use /{spec.name} here.", "forbidden")
        return None

    async def chat_settings(self, inv: Invocation):  # type: ignore[no-untyped-def]
        return await self.run_sync(self.chats.settings, inv.platform, inv.chat_id)

    def pending_key(self, inv: Invocation) -> str:
        return f"{PENDING_PREFIX}{inv.platform}:{inv.chat_id}:{inv.user_id}"

    async def ask(self, inv: Invocation, action: str, payload: str) -> None:
        """Remember that this user's next message here answers ``action`` (see :meth:`text`)."""
        await self.run_sync(self.kv.set, self.pending_key(inv), f"{action}:{payload}".encode(), PENDING_TTL_S)

    async def run_sync(self, fn: Callable, *args, **kwargs):  # type: ignore[no-untyped-def,type-arg]
        """Run a blocking call (Redis, SQL) off the event loop."""
        import asyncio

        return await asyncio.to_thread(fn, *args, **kwargs)

    async def guarded(
        self, inv: Invocation, what: str, run: Callable[[], Awaitable[list[Reply]]]
    ) -> list[Reply]:
        try:
            return await run()
        except QueueFull as exc:  # the backlog is capped: a clear "busy", nothing stored or sent
            log.warning("%s: refused, %s (%s)", what, exc, inv.where())
            return [refusal(QueueFull.user_message, "busy")]
        except UNREACHABLE_ERRORS as exc:  # Redis or the database restarting: a clear "busy", not an error id
            log.warning("%s: a shared store is unreachable (%s): %s", what, inv.where(), exc)
            return [unreachable_reply()]
        except Exception:
            error_id = new_error_id()
            log.exception("error %s in %s (%s)", error_id, what, inv.where())
            return [error_reply(error_id)]
