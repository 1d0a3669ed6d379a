"""The Discord bot: Discord events in, command-layer calls, Discord messages out. No business logic here.

Triggers: a picture posted where auto-analysis is on (DMs by default), a picture that mentions the bot, a
message that mentions the bot in reply to a picture, the "Identify characters" message menu, one slash
command per command of the layer (``/identify`` with an attachment), the same commands typed (``!recommend x``
or ``@anibot recommend x``), result buttons, and plain messages answering a question the bot asked.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from pathlib import PurePath
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.render import Outgoing, render
from bot.invocation import IncomingImage, Invocation, Progress
from bot.layer import CommandLayer, new_error_id
from bot.registry import Command, Permission
from bot.replies import Reply, ReplyKind
from core.chat.store import ChatKind
from core.settings import Settings

log = logging.getLogger(__name__)

PLATFORM = "discord"
TEXT_PREFIX = "!"
ACK_EMOJI = "👀"
CONTEXT_MENU = "Identify characters"
PICTURE_OPTION = "picture"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
SORRY = "Sorry, something went wrong on my side (error {error_id})."

Where = discord.abc.Messageable | discord.Interaction | None


def is_image(attachment: discord.Attachment) -> bool:
    if (attachment.content_type or "").startswith("image/"):
        return True
    return PurePath(attachment.filename).suffix.lower() in IMAGE_SUFFIXES


def incoming(attachments: Iterable[discord.Attachment]) -> tuple[IncomingImage, ...]:
    """Attachments for the layer: it checks the announced size before ``fetch`` downloads anything."""
    return tuple(
        IncomingImage(a.read, size=a.size, filename=a.filename, mime_type=a.content_type or "")
        for a in attachments
    )


def message_images(message: discord.Message | None) -> tuple[IncomingImage, ...]:
    if message is None:
        return ()
    return incoming(a for a in message.attachments if is_image(a))


def channel_is_nsfw(channel: object) -> bool:
    is_nsfw = getattr(channel, "is_nsfw", None)  # DMs and partial channels have none
    return bool(is_nsfw()) if callable(is_nsfw) else False


def worth_showing(ack: Reply) -> bool:
    """An ACK is shown as text when someone is ahead in the queue, or when it names an admin job."""
    position = (ack.data or {}).get("queue_position")
    return position is None or position > 1


def has_admin_role(user: discord.abc.User, roles_by_guild: dict[int, frozenset[int]]) -> bool:
    """``user`` is a member of a listed server holding one of the role ids listed for that server."""
    if not isinstance(user, discord.Member):
        return False  # a DM: no server, no roles
    listed = roles_by_guild.get(user.guild.id, frozenset())
    return any(role.id in listed for role in user.roles)


def where(channel_id: int | None, user: discord.abc.User | None, guild: discord.Guild | None) -> str:
    """Log context: ids only (never names, message text or tokens)."""
    return f"discord guild={guild.id if guild else '-'} chat={channel_id} user={user.id if user else '-'}"


class DiscordFrontEnd(commands.Bot):
    """A discord.py Bot whose every command and listener hands over to the command layer."""

    def __init__(self, settings: Settings, layer: CommandLayer) -> None:
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: switch it on in the Developer Portal (see README)
        super().__init__(
            command_prefix=commands.when_mentioned_or(TEXT_PREFIX),
            intents=intents,
            help_command=None,  # the layer's /help
            case_insensitive=True,
            # nothing the bot sends pings anyone (user text is escaped as well: bot.discord.render.escape)
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.settings = settings
        self.layer = layer
        for spec in layer.commands.all():
            self.add_command(self._text_command(spec))
            self.tree.add_command(self._slash_command(spec))
        self.tree.add_command(app_commands.ContextMenu(name=CONTEXT_MENU, callback=self.on_identify_menu))
        self.tree.on_error = self.on_app_command_error

    # --- commands generated from the layer's registry ------------------------------------------------------

    def _text_command(self, spec: Command) -> commands.Command:
        async def typed(ctx: commands.Context, *, args: str = "") -> None:
            await self.on_typed_command(ctx, spec, args)

        return commands.Command(typed, name=spec.name, help=spec.summary, usage=spec.usage)

    def _slash_command(self, spec: Command) -> app_commands.Command:
        """``/name``: a text option named after the command's argument, a picture when it takes images."""

        async def slash(interaction: discord.Interaction, **options: Any) -> None:
            await self.on_slash_command(interaction, spec, options)

        option = inspect.Parameter.KEYWORD_ONLY
        parameters = [
            inspect.Parameter(
                "interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=discord.Interaction
            )
        ]
        descriptions: dict[str, str] = {}
        if spec.argument:
            parameters.append(inspect.Parameter(spec.argument, option, annotation=str | None, default=None))
            descriptions[spec.argument] = spec.usage[:100]
        if spec.takes_images:
            required = spec.name == "identify"
            parameters.append(
                inspect.Parameter(
                    PICTURE_OPTION,
                    option,
                    annotation=discord.Attachment if required else discord.Attachment | None,
                    default=inspect.Parameter.empty if required else None,
                )
            )
            descriptions[PICTURE_OPTION] = "The picture" if required else "A picture (optional)"
        # discord.py reads the options from the callback's signature: give it one built from the registry
        slash.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        slash.__discord_app_commands_param_description__ = descriptions  # type: ignore[attr-defined]
        command = app_commands.Command(name=spec.name, description=spec.summary[:100], callback=slash)
        if spec.permission is Permission.CHAT_ADMIN:  # shown to server managers; the layer checks anyway
            command.default_permissions = discord.Permissions(manage_guild=True)
        return command

    async def setup_hook(self) -> None:
        """Publish the slash commands: to one guild (instant) when ANIBOT_DISCORD_GUILD_ID is set, else globally."""
        guild = discord.Object(self.settings.discord_guild_id) if self.settings.discord_guild_id else None
        try:
            if guild is not None:
                self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        except discord.HTTPException as exc:
            log.error(
                "could not publish the slash commands (%s); was the bot invited with the applications.commands "
                "scope? Typed commands still work.",
                exc,
            )
            return
        log.info(
            "published %d application commands %s",
            len(synced),
            f"to guild {guild.id}" if guild else "globally",
        )

    # --- who asks, where ----------------------------------------------------------------------------------

    def has_admin_role(self, user: discord.abc.User) -> bool:
        """Holds one of ANIBOT_DISCORD_ADMIN_ROLES: matched by role id, and only in the server that role is listed
        for (anyone can invite a public bot to their own server and name a role after ours)."""
        return has_admin_role(user, self.settings.discord_admin_role_ids)

    def invocation(
        self,
        *,
        channel: object,
        channel_id: int | None,
        guild: discord.Guild | None,
        user: discord.abc.User,
        args: str = "",
        images: tuple[IncomingImage, ...] = (),
        message_id: int | None = None,
    ) -> Invocation:
        in_dm = guild is None
        manages = isinstance(user, discord.Member) and user.guild_permissions.manage_guild
        return Invocation(
            platform=PLATFORM,
            chat_id=str(channel_id),
            user_id=str(user.id),
            chat_kind=ChatKind.PRIVATE if in_dm else ChatKind.GROUP,
            user_name=user.display_name,
            args=args,
            images=images,
            is_chat_admin=in_dm or manages,
            has_admin_role=self.has_admin_role(user),
            channel_nsfw=channel_is_nsfw(channel),
            message_id=str(message_id) if message_id else "",
        )

    def message_invocation(
        self, message: discord.Message, *, args: str = "", images: tuple[IncomingImage, ...] = ()
    ) -> Invocation:
        return self.invocation(
            channel=message.channel,
            channel_id=message.channel.id,
            guild=message.guild,
            user=message.author,
            args=args,
            images=images,
            message_id=message.id,
        )

    def interaction_invocation(
        self, interaction: discord.Interaction, *, args: str = "", images: tuple[IncomingImage, ...] = ()
    ) -> Invocation:
        return self.invocation(
            channel=interaction.channel,
            channel_id=interaction.channel_id,
            guild=interaction.guild,
            user=interaction.user,
            args=args,
            images=images,
            message_id=interaction.message.id if interaction.message else None,
        )

    def mentions_me(self, message: discord.Message) -> bool:
        """Mentioned in the text itself: a reply's automatic ping to the bot does not count."""
        return self.user is not None and self.user.id in message.raw_mentions

    def without_my_mention(self, text: str) -> str:
        if self.user is None:
            return text.strip()
        return re.sub(rf"<@!?{self.user.id}>", "", text).strip()

    async def referenced(self, message: discord.Message) -> discord.Message | None:
        """The message this one replies to, if any and still readable."""
        reference = message.reference
        if reference is None or reference.message_id is None:
            return None
        if isinstance(reference.resolved, discord.Message):
            return reference.resolved
        try:
            return await message.channel.fetch_message(reference.message_id)
        except discord.HTTPException as exc:
            log.info("could not read the replied-to message (%s): %s", message.channel.id, exc)
            return None

    # --- events ------------------------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot:
            return
        ctx = await self.get_context(message)
        if ctx.command is not None:  # !name or @anibot name
            await self.invoke(ctx)
            return
        mentioned = self.mentions_me(message)
        images = message_images(message)
        if not images and mentioned:  # "@anibot who is this?" in reply to a picture
            images = message_images(await self.referenced(message))
        if images:
            await self.answer_images(message, images, explicit=mentioned)
            return
        inv = self.message_invocation(message, args=self.without_my_mention(message.content))
        replies = await self.layer.text(inv)
        if not replies and mentioned:  # mentioned with nothing to do: say what the bot does
            replies = await self.layer.command(inv, "help")
        await self.reply_to(message, replies, inv)

    async def answer_images(
        self, message: discord.Message, images: tuple[IncomingImage, ...], *, explicit: bool
    ) -> None:
        inv = self.message_invocation(message, images=images)
        if not await self.layer.answers_images(inv, explicit=explicit):
            return  # a picture in a guild channel without auto-analysis, nobody asked
        await self.acknowledge(message)
        replies = await self.layer.images(inv, self.message_progress(message, reacted=True), explicit=True)
        await self.reply_to(message, replies, inv)

    async def on_typed_command(self, ctx: commands.Context, spec: Command, args: str) -> None:
        message = ctx.message
        images: tuple[IncomingImage, ...] = ()
        if spec.takes_images:
            images = message_images(message) or message_images(await self.referenced(message))
            await self.acknowledge(message)
        inv = self.message_invocation(message, args=args.strip(), images=images)
        progress = self.message_progress(message, reacted=spec.takes_images)
        replies = await self.layer.command(inv, spec.name, progress)
        await self.reply_to(message, replies, inv)

    async def on_slash_command(self, interaction: discord.Interaction, spec: Command, options: dict) -> None:
        await interaction.response.defer(thinking=True)
        picture = options.get(PICTURE_OPTION)
        inv = self.interaction_invocation(
            interaction,
            args=(options.get(spec.argument) or "").strip() if spec.argument else "",
            images=incoming([picture]) if picture is not None else (),
        )
        replies = await self.layer.command(inv, spec.name, self.interaction_progress(interaction))
        await self.follow_up(interaction, replies, inv)

    async def on_identify_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.defer(thinking=True)
        inv = self.interaction_invocation(interaction, images=message_images(message))
        replies = await self.layer.images(inv, self.interaction_progress(interaction), explicit=True)
        await self.follow_up(interaction, replies, inv)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Button presses: the custom id is the layer's callback data, so they work across restarts."""
        if interaction.type is not discord.InteractionType.component:
            return
        custom_id = str((interaction.data or {}).get("custom_id", ""))
        if ":" not in custom_id:
            return
        await interaction.response.defer(thinking=True)
        inv = self.interaction_invocation(interaction)
        replies = await self.layer.button(inv, custom_id, self.interaction_progress(interaction))
        await self.follow_up(interaction, replies, inv)

    # --- acknowledging and replying -----------------------------------------------------------------------

    async def acknowledge(self, message: discord.Message) -> None:
        """👀 on the message (best effort: the bot may lack the permission to react)."""
        try:
            await message.add_reaction(ACK_EMOJI)
        except discord.HTTPException as exc:
            log.debug("could not react in chat %s: %s", message.channel.id, exc)

    def message_progress(self, message: discord.Message, *, reacted: bool = False) -> Progress:
        """Progress of a message's request: 👀 once the layer starts working, the ACK text when worth it."""

        async def show(reply: Reply) -> None:
            nonlocal reacted
            if reply.kind is not ReplyKind.ACK:
                return
            if not reacted:
                reacted = True
                await self.acknowledge(message)
            if worth_showing(reply):
                try:
                    await message.reply(reply.text, mention_author=False)
                except discord.HTTPException as exc:  # the answer itself may still get through
                    log.warning("could not show progress in chat %s: %s", message.channel.id, exc)

        return show

    def interaction_progress(self, interaction: discord.Interaction) -> Progress:
        async def show(reply: Reply) -> None:
            if reply.kind is ReplyKind.ACK and worth_showing(reply):  # replaces "anibot is thinking…"
                await interaction.edit_original_response(content=reply.text)

        return show

    async def reply_to(self, message: discord.Message, replies: list[Reply], inv: Invocation) -> None:
        async def first(outgoing: Outgoing) -> None:
            await message.reply(**outgoing.kwargs(), mention_author=False)

        async def rest(outgoing: Outgoing) -> None:
            await message.channel.send(**outgoing.kwargs())

        for reply in replies:
            await send_reply(reply, inv, first, rest)

    async def follow_up(
        self, interaction: discord.Interaction, replies: list[Reply], inv: Invocation
    ) -> None:
        """Answers within the interaction's 15-minute window (the first one replaces the deferral)."""

        async def send(outgoing: Outgoing) -> None:
            await interaction.followup.send(**outgoing.kwargs())

        for reply in replies:
            await send_reply(reply, inv, send, send)

    # --- the error handlers: log with context, answer briefly -------------------------------------------------

    async def on_command_error(self, ctx: commands.Context, error: commands.CommandError) -> None:  # type: ignore[override]
        if isinstance(error, commands.CommandNotFound):
            return
        original = getattr(error, "original", error)
        error_id = new_error_id()
        log.error(
            "error %s in !%s (%s)",
            error_id,
            ctx.command.name if ctx.command else "?",
            where(ctx.channel.id, ctx.author, ctx.guild),
            exc_info=original,
        )
        await self.apologise(ctx.channel, error_id)

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", error)
        error_id = new_error_id()
        name = interaction.command.name if interaction.command else "?"
        log.error(
            "error %s in /%s (%s)",
            error_id,
            name,
            where(interaction.channel_id, interaction.user, interaction.guild),
            exc_info=original,
        )
        await self.apologise(interaction, error_id)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        error_id = new_error_id()
        first = args[0] if args else None
        context, target = "", None
        if isinstance(first, discord.Message):
            context, target = where(first.channel.id, first.author, first.guild), first.channel
        elif isinstance(first, discord.Interaction):
            context, target = where(first.channel_id, first.user, first.guild), first
        log.exception("error %s in %s (%s)", error_id, event_method, context)
        await self.apologise(target, error_id)

    async def apologise(self, target: Where, error_id: str) -> None:
        text = SORRY.format(error_id=error_id)
        try:
            if isinstance(target, discord.Interaction):
                if target.response.is_done():
                    await target.followup.send(text, ephemeral=True)
                else:
                    await target.response.send_message(text, ephemeral=True)
            elif target is not None:
                await target.send(text)
        except discord.HTTPException:
            log.warning("could not send the apology for error %s", error_id)


async def send_reply(
    reply: Reply,
    inv: Invocation,
    first: Callable[[Outgoing], Awaitable[None]],
    rest: Callable[[Outgoing], Awaitable[None]],
) -> None:
    """``reply``'s messages in order; when Discord refuses the picture (too large for this server, say), the
    answer is sent again without it, so the text always arrives."""
    messages = render(reply, channel_nsfw=inv.channel_nsfw)
    try:
        await first(messages[0])
    except discord.HTTPException as exc:
        if messages[0].file is None or exc.status not in (400, 413):
            raise
        log.warning(
            "Discord refused the picture (%s %s) in chat %s: text only", exc.status, exc.code, inv.chat_id
        )
        messages = render(replace(reply, image=None), channel_nsfw=inv.channel_nsfw)
        await first(messages[0])
    for outgoing in messages[1:]:
        await rest(outgoing)


def build_bot(settings: Settings, layer: CommandLayer) -> commands.Bot:
    """A discord.py Bot wired to ``layer`` (not connected: ``run`` logs in)."""
    return DiscordFrontEnd(settings, layer)


def run(settings: Settings) -> None:
    if settings.discord_token is None:
        raise ValueError("no Discord token: set ANIBOT_DISCORD_TOKEN")
    layer = CommandLayer.from_settings(settings)
    bot = build_bot(settings, layer)
    log.info("Discord bot starting (%d commands)", len(layer.commands.all()))
    try:
        # log_handler=None: keep configure_logging's handlers; the token is never logged
        bot.run(settings.discord_token.get_secret_value(), log_handler=None)
    except discord.PrivilegedIntentsRequired:
        log.error(
            "Discord refused the Message Content intent: switch it on for this application in the "
            "Developer Portal (Bot > Privileged Gateway Intents)."
        )
        raise
