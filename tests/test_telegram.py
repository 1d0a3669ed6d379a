"""A real python-telegram-bot Application against a fake Bot API on loopback, over the real queue."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable

import pytest

from bot.telegram.app import build_application
from core.synth import render_scene
from tests.conftest import fresh_id
from tests.fake_telegram import FakeBotAPI

pytestmark = pytest.mark.queue

ADMIN = 1001


def scene_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    render_scene(seed).image.save(buffer, format="PNG")
    return buffer.getvalue()


def new_id() -> int:
    return int(fresh_id())


def run_bot(stack, scenario: Callable[[FakeBotAPI], Awaitable[None]], **overrides: object) -> FakeBotAPI:  # type: ignore[no-untyped-def]
    api = FakeBotAPI()

    async def main() -> None:
        await api.start()
        settings = stack.settings(
            telegram_token=api.token,
            telegram_base_url=api.base_url,
            telegram_base_file_url=api.base_file_url,
            **overrides,
        )
        from bot.layer import CommandLayer

        application = build_application(settings, CommandLayer.from_settings(settings), rate_limiter=False)
        await application.initialize()
        await application.post_init(application)  # type: ignore[misc]
        await application.start()
        await application.updater.start_polling(poll_interval=0.0, timeout=1)  # type: ignore[union-attr]
        try:
            await scenario(api)
        finally:
            await application.updater.stop()  # type: ignore[union-attr]
            await application.stop()
            await application.shutdown()
            await api.stop()

    asyncio.run(main())
    return api


def test_a_photo_in_a_private_chat_gets_the_annotated_answer(bot_stack):
    chat = new_id()

    async def scenario(api: FakeBotAPI) -> None:
        api.add_file("p1", scene_png(6_600_001))
        api.push("message", api.message(chat, chat, photo=api.photo_sizes("p1")))
        await api.wait_for(lambda: api.sent("sendPhoto", chat))

    api = run_bot(bot_stack, scenario)
    photo = api.sent("sendPhoto", chat)[0]
    caption = photo.params["caption"]
    assert len(caption) <= 1024 and "<b>#1" in caption
    labels = [b["text"] for row in photo.params["reply_markup"]["inline_keyboard"] for b in row]
    assert labels == ["More candidates", "Wrong? Tell me who"]
    assert photo.files["photo"].startswith(b"\x89PNG")
    assert api.downloads == ["p1"]  # the largest size only
    assert api.sent("sendChatAction", chat) and api.sent("setMessageReaction", chat)
    assert {c.params["commands"][0]["command"] for c in api.sent("setMyCommands")} == {"identify"}


def test_image_document_album_and_more_candidates(bot_stack):
    chat = new_id()

    async def scenario(api: FakeBotAPI) -> None:
        api.add_file("doc", scene_png(6_600_002))
        document = {
            "file_id": "doc",
            "file_unique_id": "docu",
            "file_name": "x.png",
            "mime_type": "image/png",
        }
        api.push(
            "message", api.message(chat, chat, document={**document, "file_size": len(api.files["doc"])})
        )
        await api.wait_for(lambda: len(api.sent("sendPhoto", chat)) == 1)
        for n, seed in enumerate((6_600_003, 6_600_004)):
            api.add_file(f"al{n}", scene_png(seed))
            api.push(
                "message", api.message(chat, chat, photo=api.photo_sizes(f"al{n}"), media_group_id="album1")
            )
        await api.wait_for(lambda: len(api.sent("sendPhoto", chat)) == 3, 90)
        markup = api.sent("sendPhoto", chat)[0].params["reply_markup"]["inline_keyboard"][0][0]
        sent = api.message(chat, 999, text="result")
        api.push(
            "callback_query",
            {
                "id": "cb1",
                "from": {"id": chat, "is_bot": False, "first_name": "u"},
                "chat_instance": "ci",
                "data": markup["callback_data"],
                "message": sent,
            },
        )
        await api.wait_for(
            lambda: any("All candidates" in c.params.get("text", "") for c in api.sent("sendMessage", chat))
        )

    api = run_bot(bot_stack, scenario)
    assert sorted(api.downloads) == ["al0", "al1", "doc"]
    assert api.sent("answerCallbackQuery")


def test_groups_ignore_pictures_unless_the_bot_is_mentioned(bot_stack):
    group, user = -new_id(), new_id()

    async def scenario(api: FakeBotAPI) -> None:
        api.add_file("g1", scene_png(6_600_005))
        posted = api.message(group, user, chat_type="group", photo=api.photo_sizes("g1"))
        api.push("message", posted)
        api.push("message", api.message(group, user, chat_type="group", text="/help"))
        await api.wait_for(lambda: api.sent("sendMessage", group))
        assert not api.sent("sendPhoto", group) and not api.downloads
        api.push(
            "message",
            api.message(
                group, user, chat_type="group", text="@anibot_test_bot who is this?", reply_to_message=posted
            ),
        )
        await api.wait_for(lambda: api.sent("sendPhoto", group))

    api = run_bot(bot_stack, scenario)
    assert api.downloads == ["g1"]


def test_refusals_oversize_and_admin_commands(bot_stack):
    chat, group = new_id(), -new_id()

    async def scenario(api: FakeBotAPI) -> None:
        api.add_file("big", scene_png(6_600_006))
        api.push("message", api.message(chat, chat, photo=api.photo_sizes("big", size=50 * 1024 * 1024)))
        api.push("message", api.message(chat, chat, text="/retrain"))
        api.push("message", api.message(group, chat, chat_type="group", text="/settings auto on"))
        await api.wait_for(lambda: len(api.sent("sendMessage", chat)) >= 2 and api.sent("sendMessage", group))
        api.push("message", api.message(ADMIN, ADMIN, text="/characters"))
        await api.wait_for(lambda: api.sent("sendMessage", ADMIN))

    api = run_bot(bot_stack, scenario)
    texts = [c.params["text"] for c in api.sent("sendMessage", chat)]
    assert any("too large" in t for t in texts), texts
    assert any("for bot admins only" in t for t in texts), texts
    assert "big" not in api.downloads, "an oversized file was downloaded"
    assert "admins can use /settings" in api.sent("sendMessage", group)[0].params["text"]
    assert "admins only" not in api.sent("sendMessage", ADMIN)[0].params["text"]
