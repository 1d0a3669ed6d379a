"""The Telegram bot: Telegram updates in, command-layer calls, Telegram messages out. No business logic here.

Triggers: a picture where auto-analysis is on (private chats by default), a reply to a picture that mentions the
bot, ``/identify`` as a photo caption or in reply to a picture, albums (each picture answered), every command
of the layer, inline buttons, and plain messages answering a question the bot asked ("Wrong? Tell me who").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

import httpx
from telegram import BotCommand, Message, ReactionTypeEmoji, Update
from telegram.constants import ChatAction, ChatMemberStatus, ChatType, ParseMode
from telegram.error import BadRequest, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.invocation import IncomingImage, Invocation
from bot.layer import CommandLayer, new_error_id
from bot.registry import Permission
from bot.replies import Reply, ReplyKind
from bot.telegram.render import caption_and_rest, keyboard, message_chunks, photo_fits
from core.chat.store import ChatKind
from core.settings import Settings
from core.vision.intake import too_many_bytes

log = logging.getLogger(__name__)

PLATFORM = "telegram"
DOWNLOAD_TIMEOUT_S = 60.0  # to connect, or between two chunks of a picture being downloaded
ALBUM_WAIT_S = 1.0  # an album arrives as several updates: answer them together after this quiet time
NEW_MESSAGES = filters.UpdateType.MESSAGE  # not edits (a fixed caption is no new question), not channel posts
IMAGES = (filters.PHOTO | filters.Document.IMAGE | filters.ANIMATION) & NEW_MESSAGES


def message_images(message: Message | None, max_bytes: int) -> tuple[IncomingImage, ...]:
    """The pictures of a message (the largest size of a photo, image documents, the still Telegram makes of an
    animation's first frame, since GIFs arrive converted to MP4); sizes as Telegram announces them, and each
    download stops past ``max_bytes`` even when Telegram announced no size."""
    if message is None:
        return ()
    found = []
    if message.photo:
        photo = message.photo[-1]
        found.append((photo.file_id, photo.file_size, f"photo-{message.message_id}.jpg", "image/jpeg"))
    document = message.document
    if document is not None and (document.mime_type or "").startswith("image/"):
        found.append(
            (document.file_id, document.file_size, document.file_name or "image", document.mime_type)
        )
    elif message.animation is not None and message.animation.thumbnail is not None:
        still = message.animation.thumbnail
        found.append((still.file_id, still.file_size, f"animation-{message.message_id}.jpg", "image/jpeg"))
    return tuple(
        IncomingImage(
            _downloader(message, file_id, max_bytes), size=size, filename=name, mime_type=mime or ""
        )
        for file_id, size, name, mime in found
    )


def _downloader(message: Message, file_id: str, max_bytes: int) -> Callable[[], Awaitable[bytes]]:
    async def fetch() -> bytes:
        file = await message.get_bot().get_file(file_id)
        if file.file_size is not None and file.file_size > max_bytes:
            raise too_many_bytes(file.file_size, max_bytes)
        url = file.file_path or ""
        if not url.startswith(("http://", "https://")):  # a local Bot API server's path: PTB reads the file
            data = bytes(await file.download_as_bytearray())
            if len(data) > max_bytes:
                raise too_many_bytes(len(data), max_bytes)
            return data
        return await download_capped(url, max_bytes)

    return fetch


async def download_capped(url: str, max_bytes: int, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """The file at ``url``, streamed and refused as soon as more than ``max_bytes`` arrived (PTB's own download
    reads it all first). The URL holds the bot token: it is never logged here."""
    chunks = bytearray()
    async with httpx.AsyncClient(timeout=timeout_s) as client, client.stream("GET", url) as response:
        if response.status_code != 200:
            raise TelegramError(f"the file download answered HTTP {response.status_code}")
        announced = response.headers.get("Content-Length", "")
        if announced.isascii() and announced.isdigit() and int(announced) > max_bytes:
            raise too_many_bytes(int(announced), max_bytes)
        async for chunk in response.aiter_bytes():
            chunks.extend(chunk)
            if len(chunks) > max_bytes:
                raise too_many_bytes(len(chunks), max_bytes)
    return bytes(chunks)


def mentions_bot(message: Message, username: str | None) -> bool:
    text = message.text or message.caption or ""
    return bool(username) and f"@{username}".lower() in text.lower()


class TelegramFrontEnd:
    def __init__(self, layer: CommandLayer) -> None:
        self.layer = layer
        self.max_bytes = layer.settings.max_image_bytes
        self._albums: dict[str, list[Message]] = {}

    # --- building invocations ----------------------------------------------------------------------------

    async def invocation(
        self, update: Update, *, args: str = "", images: tuple[IncomingImage, ...] = ()
    ) -> Invocation:
        chat, user, message = update.effective_chat, update.effective_user, update.effective_message
        assert chat is not None and user is not None
        return Invocation(
            platform=PLATFORM,
            chat_id=str(chat.id),
            user_id=str(user.id),
            chat_kind=ChatKind.PRIVATE if chat.type == ChatType.PRIVATE else ChatKind.GROUP,
            user_name=user.username or user.first_name or "",
            args=args,
            images=images,
            message_id=str(message.message_id) if message else "",
        )

    async def is_chat_admin(self, update: Update) -> bool:
        chat, user = update.effective_chat, update.effective_user
        if chat is None or user is None or chat.type == ChatType.PRIVATE:
            return True
        try:
            member = await chat.get_member(user.id)
        except TelegramError as exc:
            log.warning("could not read chat membership (chat=%s user=%s): %s", chat.id, user.id, exc)
            return False
        return member.status in (ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER)

    # --- handlers --------------------------------------------------------------------------------------

    async def on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or not message.text:
            return
        word, _, args = message.text.partition(" ")
        name = word[1:].split("@", 1)[0].lower()
        spec = self.layer.commands.get(name)
        images = (
            message_images(message.reply_to_message, self.max_bytes) if spec and spec.takes_images else ()
        )
        inv = await self.invocation(update, args=args.strip(), images=images)
        if spec is not None and spec.permission is Permission.CHAT_ADMIN:
            inv = replace(inv, is_chat_admin=await self.is_chat_admin(update))
        if spec is not None and spec.takes_images:
            await self.acknowledge(message)
        replies = await self.layer.command(inv, name, self.progress(message))
        await self.send(message, replies)

    async def on_images(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None:
            return
        if message.media_group_id:  # an album: gather its messages, answer once it is complete
            album = self._albums.setdefault(message.media_group_id, [])
            album.append(message)
            if len(album) == 1:
                context.application.create_task(self._answer_album(update, message.media_group_id))
            return
        await self._answer_images(update, [message])

    async def _answer_album(self, update: Update, group_id: str) -> None:
        seen = -1
        while seen != len(self._albums[group_id]):  # wait until no new part arrived for ALBUM_WAIT_S
            seen = len(self._albums[group_id])
            await asyncio.sleep(ALBUM_WAIT_S)
        await self._answer_images(update, self._albums.pop(group_id))

    async def _answer_images(self, update: Update, messages: list[Message]) -> None:
        first = messages[0]
        captions = " ".join(m.caption or "" for m in messages)
        username = first.get_bot().username
        command, _, args = captions.strip().partition(" ")
        name = command[1:].split("@", 1)[0].lower() if command.startswith("/") else ""
        images = tuple(image for m in messages for image in message_images(m, self.max_bytes))
        if name and name != "identify":  # e.g. /addcharacter as the caption of its reference pictures
            inv = await self.invocation(update, args=args.strip(), images=images)
            await self.acknowledge(first)
            await self.send(first, await self.layer.command(inv, name, self.progress(first)))
            return
        explicit = name == "identify" or any(mentions_bot(m, username) for m in messages)
        inv = await self.invocation(update, images=images)
        if not await self.layer.answers_images(inv, explicit=explicit):
            return  # a group picture nobody asked about
        await self.acknowledge(first)
        await self.send(first, await self.layer.images(inv, self.progress(first), explicit=True))

    async def on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or not message.text:
            return
        replied = message.reply_to_message
        if replied is not None and mentions_bot(message, message.get_bot().username):
            images = message_images(replied, self.max_bytes)
            if images:  # "@anibot who is this?" in reply to a picture
                await self.acknowledge(message)
                inv = await self.invocation(update, images=images)
                await self.send(message, await self.layer.images(inv, self.progress(message), explicit=True))
                return
        inv = await self.invocation(update, args=message.text)
        await self.send(message, await self.layer.text(inv))

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or query.data is None:
            return
        await query.answer()
        message = query.message if isinstance(query.message, Message) else None
        inv = await self.invocation(update)
        if message is None:  # too old to answer in place: the button's answer has nowhere to go
            return
        await self.send(message, await self.layer.button(inv, query.data, self.progress(message)))

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        error_id = new_error_id()
        where = ""
        if isinstance(update, Update) and update.effective_chat and update.effective_user:
            where = f"chat={update.effective_chat.id} user={update.effective_user.id}"
        log.error("error %s in a Telegram update (%s)", error_id, where, exc_info=context.error)
        if isinstance(update, Update) and update.effective_message is not None:
            try:
                await update.effective_message.reply_text(
                    f"Sorry, something went wrong on my side (error {error_id})."
                )
            except TelegramError:
                log.warning("could not send the apology for error %s", error_id)

    # --- acknowledging and replying -----------------------------------------------------------------------

    async def acknowledge(self, message: Message) -> None:
        """At once: the 'sending a photo' action and an 👀 reaction (best effort: neither may fail the answer)."""
        steps: tuple[Callable[[], Awaitable[object]], ...] = (
            lambda: message.get_bot().send_chat_action(message.chat_id, ChatAction.UPLOAD_PHOTO),
            lambda: message.set_reaction(ReactionTypeEmoji("👀")),  # a chat may forbid reactions
        )
        for step in steps:
            try:
                await step()
            except TelegramError as exc:
                log.debug("acknowledgement failed in chat %s: %s", message.chat_id, exc)

    def progress(self, message: Message) -> Callable[[Reply], Awaitable[None]]:
        async def show(reply: Reply) -> None:
            position = (reply.data or {}).get("queue_position", 1)
            if reply.kind is ReplyKind.ACK and position > 1:  # only worth a message when there is a queue
                await message.reply_text(reply.text, do_quote=True)

        return show

    async def send(self, message: Message, replies: list[Reply]) -> None:
        for reply in replies:
            if reply.image is not None and not photo_fits(reply.image.data):
                log.warning(
                    "picture of %d bytes over Telegram's photo limit: text only", len(reply.image.data)
                )
                reply = replace(reply, image=None)
            if reply.image is not None:
                chunks = caption_and_rest(reply)
                try:
                    await message.reply_photo(
                        photo=reply.image.data,
                        filename=reply.image.filename,
                        caption=chunks[0],
                        parse_mode=ParseMode.HTML,
                        has_spoiler=reply.image.spoiler,
                        reply_markup=keyboard(reply),
                        do_quote=True,
                    )
                except BadRequest as exc:  # the photo refused (size, dimensions): the answer still arrives
                    log.warning(
                        "Telegram refused the picture in chat %s (%s): text only", message.chat_id, exc
                    )
                    await self.send(message, [replace(reply, image=None)])
                    continue
                rest = chunks[1:]
            else:
                chunks = message_chunks(reply)
                for chunk in chunks[:-1]:
                    await message.reply_text(chunk, parse_mode=ParseMode.HTML, do_quote=True)
                await message.reply_text(
                    chunks[-1], parse_mode=ParseMode.HTML, reply_markup=keyboard(reply), do_quote=True
                )
                rest = []
            for chunk in rest:
                await message.reply_text(chunk, parse_mode=ParseMode.HTML)


async def publish_commands(application: Application) -> None:
    """The command menu: every command but the admin ones, with their summaries."""
    front: TelegramFrontEnd = application.bot_data["front_end"]
    commands = [
        BotCommand(c.name, c.summary[:256])
        for c in front.layer.commands.all()
        if c.permission is not Permission.BOT_ADMIN
    ]
    await application.bot.set_my_commands(commands)


def build_application(settings: Settings, layer: CommandLayer, *, rate_limiter: bool = True) -> Application:
    """A python-telegram-bot Application wired to ``layer``; Telegram's flood limits (about one message a second
    per chat, twenty a minute per group) are kept by PTB's AIORateLimiter."""
    if settings.telegram_token is None:
        raise ValueError("no Telegram token: set ANIBOT_TELEGRAM_TOKEN")
    builder = (
        ApplicationBuilder()
        .token(settings.telegram_token.get_secret_value())
        .base_url(settings.telegram_base_url)
        .base_file_url(settings.telegram_base_file_url)
        .concurrent_updates(True)
        .post_init(publish_commands)
    )
    if rate_limiter:
        builder = builder.rate_limiter(AIORateLimiter(max_retries=2))
    application = builder.build()
    front = TelegramFrontEnd(layer)
    application.bot_data["front_end"] = front
    names = [c.name for c in layer.commands.all()]
    application.add_handler(CommandHandler(names, front.on_command, filters=NEW_MESSAGES))
    application.add_handler(MessageHandler(IMAGES, front.on_images))
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND & NEW_MESSAGES, front.on_text))
    application.add_handler(CallbackQueryHandler(front.on_button))
    application.add_error_handler(front.on_error)
    return application


def run(settings: Settings) -> None:
    """Long polling until interrupted. Needs Redis and ``anibot worker`` processes; loads no model."""
    if settings.telegram_token is None:
        raise SystemExit("No Telegram token: set ANIBOT_TELEGRAM_TOKEN (environment or .env).")
    layer = CommandLayer.from_settings(settings)
    application = build_application(settings, layer)
    log.info("Telegram bot starting (API %s)", settings.telegram_base_url)
    application.run_polling(allowed_updates=Update.ALL_TYPES)
