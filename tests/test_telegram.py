"""A real python-telegram-bot Application against a fake Bot API on loopback, over the real queue."""

from __future__ import annotations

import asyncio
import html
import io
import re
from collections.abc import Awaitable, Callable

import pytest

from bot.telegram.app import build_application
from core.datasets.synth import render_scene
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


def run_bot(  # type: ignore[no-untyped-def]
    stack,
    scenario: Callable[[FakeBotAPI], Awaitable[None]],
    *,
    rate_limiter: bool = False,
    **overrides: object,
) -> FakeBotAPI:
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

        layer = CommandLayer.from_settings(settings)
        application = build_application(settings, layer, rate_limiter=rate_limiter)
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
        posted = api.message(chat, chat, photo=api.photo_sizes("p1"))
        api.push("message", posted)
        await api.wait_for(lambda: api.sent("sendPhoto", chat))
        api.push("edited_message", {**posted, "caption": "fixed", "edit_date": posted["date"] + 1})  # ignored
        api.push("message", api.message(chat, chat, text="/help"))
        await api.wait_for(lambda: api.sent("sendMessage", chat))

    api = run_bot(bot_stack, scenario, rate_limiter=True)  # PTB's AIORateLimiter in the loop
    photo = api.sent("sendPhoto", chat)[0]
    caption = photo.params["caption"]
    assert len(caption) <= 1024 and "<b>#1" in caption
    assert photo.params["parse_mode"] == "HTML" and photo.params["has_spoiler"] is False
    assert "reply_parameters" in photo.params  # quotes the picture it answers
    labels = [b["text"] for row in photo.params["reply_markup"]["inline_keyboard"] for b in row]
    assert labels[-2:] == ["More candidates", "Wrong? Tell me who"]
    assert ("Show guesses" in labels) == ("not sure" in caption)  # heads below the chat's sure threshold
    assert photo.files["photo"].startswith(b"\xff\xd8\xff")  # the reply picture is a JPEG
    assert api.downloads == ["p1"]  # the largest size only, and an edited caption is no new question
    assert len(api.sent("sendPhoto", chat)) == 1
    assert api.sent("sendChatAction", chat) and api.sent("setMessageReaction", chat)
    assert {c.params["commands"][0]["command"] for c in api.sent("setMyCommands")} == {"identify"}


def test_a_refused_photo_still_gets_the_text_answer(bot_stack):
    """Telegram refuses the picture (too large, odd dimensions): the answer arrives as text, buttons included."""
    chat = new_id()

    async def scenario(api: FakeBotAPI) -> None:
        api.refuse["sendPhoto"] = "Bad Request: PHOTO_INVALID_DIMENSIONS"
        api.add_file("r1", scene_png(6_600_009))
        api.push("message", api.message(chat, chat, photo=api.photo_sizes("r1")))
        await api.wait_for(
            lambda: any("head" in c.params.get("text", "") for c in api.sent("sendMessage", chat))
        )

    api = run_bot(bot_stack, scenario)
    answer = next(c for c in api.sent("sendMessage", chat) if "head" in c.params.get("text", ""))
    assert "<b>#1" in answer.params["text"] and answer.params["parse_mode"] == "HTML"
    labels = [b["text"] for row in answer.params["reply_markup"]["inline_keyboard"] for b in row]
    assert labels[-2:] == ["More candidates", "Wrong? Tell me who"]
    assert ("Show guesses" in labels) == ("not sure" in answer.params["text"])
    assert len(api.sent("sendPhoto", chat)) == 1  # tried once, not retried with the same file
    assert not any("went wrong" in c.params.get("text", "") for c in api.sent("sendMessage", chat))


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
        # a GIF arrives as an MP4 animation: its first-frame still is analysed (same bytes: a cached answer)
        api.add_file("anim-still", api.files["doc"])
        animation = {
            "file_id": "anim",
            "file_unique_id": "animu",
            "width": 640,
            "height": 480,
            "duration": 2,
            "mime_type": "video/mp4",
            "thumbnail": api.photo_sizes("anim-still")[1],
        }
        api.push("message", api.message(chat, chat, animation=animation, document=animation))
        await api.wait_for(lambda: len(api.sent("sendPhoto", chat)) == 4)

        rows = api.sent("sendPhoto", chat)[0].params["reply_markup"]["inline_keyboard"]
        buttons = {b["text"]: b for row in rows for b in row}
        more, wrong = buttons["More candidates"], buttons["Wrong? Tell me who"]
        sent = api.message(chat, 999, text="result")
        for n, button in enumerate((more, wrong)):
            api.push(
                "callback_query",
                {
                    "id": f"cb{n}",
                    "from": {"id": chat, "is_bot": False, "first_name": "u"},
                    "chat_instance": "ci",
                    "data": button["callback_data"],
                    "message": sent,
                },
            )
        await api.wait_for(lambda: len(api.sent("sendMessage", chat)) == 2)
        api.push("message", api.message(chat, chat, text="Hatsune Miku"))  # the answer to "Who is it?"
        await api.wait_for(lambda: len(api.sent("sendMessage", chat)) == 3)

    api = run_bot(bot_stack, scenario, rate_user_burst=10)  # five pictures from one user
    assert sorted(api.downloads) == ["al0", "al1", "anim-still", "doc"]
    assert len(api.sent("answerCallbackQuery")) == 2
    assert any("All candidates" in c.params["text"] for c in api.sent("sendMessage", chat))
    asked = next(c for c in api.sent("sendMessage", chat) if "Who is it?" in c.params["text"])
    assert asked.params["reply_markup"] == {"force_reply": True, "selective": True}
    assert "Thanks! Noted that #1 is Hatsune Miku" in api.sent("sendMessage", chat)[-1].params["text"]


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
        api.add_file("g2", api.files["g1"])
        api.push(
            "message",
            api.message(group, user, chat_type="group", caption="/identify", photo=api.photo_sizes("g2")),
        )
        await api.wait_for(lambda: len(api.sent("sendPhoto", group)) == 2)

    api = run_bot(bot_stack, scenario)
    assert api.downloads == ["g1", "g2"]
    help_text = api.sent("sendMessage", group)[0].params["text"]
    assert "/identify" in help_text and "/settings" in help_text


ADMIN_COMMANDS = ("addcharacter", "removecharacter", "characters", "retrain", "reindex", "jobs", "review")


def test_refusals_oversize_and_admin_commands(bot_stack):
    chat, group = new_id(), -new_id()

    async def scenario(api: FakeBotAPI) -> None:
        api.add_file("big", scene_png(6_600_006))
        api.push("message", api.message(chat, chat, photo=api.photo_sizes("big", size=50 * 1024 * 1024)))
        for command in ADMIN_COMMANDS:  # every admin command, as a non-admin: refused
            api.push("message", api.message(chat, chat, text=f"/{command} x"))
        api.push("message", api.message(group, chat, chat_type="group", text="/settings auto on"))
        await api.wait_for(
            lambda: (
                len(api.sent("sendMessage", chat)) >= 1 + len(ADMIN_COMMANDS)
                and api.sent("sendMessage", group)
            )
        )
        api.push("message", api.message(ADMIN, ADMIN, text="/characters"))
        await api.wait_for(lambda: api.sent("sendMessage", ADMIN))

    api = run_bot(bot_stack, scenario)
    texts = [c.params["text"] for c in api.sent("sendMessage", chat)]
    assert any("too large" in t for t in texts), texts
    for command in ADMIN_COMMANDS:
        assert any(f"/{command} is for bot admins only" in t for t in texts), (command, texts)
    assert "big" not in api.downloads, "an oversized file was downloaded"
    assert "admins can use /settings" in api.sent("sendMessage", group)[0].params["text"]
    assert "admins only" not in api.sent("sendMessage", ADMIN)[0].params["text"]


# --- rendering and logging, no bot needed ---------------------------------------------------------------------


def test_long_answers_split_into_an_html_caption_and_messages():
    from bot.replies import MAX_MESSAGES, Button, Reply, ReplyField, ReplyImage
    from bot.telegram.render import MESSAGE_LIMIT, blocks, caption_and_rest, keyboard, message_chunks, pack

    fields = tuple(ReplyField(f"#{n} <Head>", "Nagato & Yuki " * 20) for n in range(1, 9))
    reply = Reply(
        title="Result <script>",
        fields=fields,
        image=ReplyImage(b"png", "a.png"),
        buttons=(Button("More candidates", "more", "job"),),
        footer="a & b",
    )
    chunks = caption_and_rest(reply)
    assert len(chunks) > 1 and len(chunks[0]) <= 1024 and all(len(c) <= 4096 for c in chunks)
    assert chunks[0].startswith("<b>Result &lt;script&gt;</b>")
    for chunk in chunks:  # every chunk is well-formed on its own: tags balanced, only escaped text
        assert chunk.count("<b>") == chunk.count("</b>") and chunk.count("<i>") == chunk.count("</i>")
        assert "<script>" not in chunk and "<Head>" not in chunk and "& " not in chunk
    assert "Nagato &amp; Yuki" in chunks[0] and chunks[-1].endswith("<i>a &amp; b</i>")
    huge = Reply(text="x" * 10_000)  # packing loses nothing; what a chat gets is capped (see cap_messages)
    assert all(len(c) <= 4096 for c in pack(blocks(huge), MESSAGE_LIMIT))
    assert "".join(pack(blocks(huge), MESSAGE_LIMIT)) == "x" * 10_000
    assert len(message_chunks(huge)) <= MAX_MESSAGES
    dense = pack(
        blocks(Reply(text="&" * 5000)), MESSAGE_LIMIT
    )  # escaping makes it 25,000 characters: cut, never lost
    assert all(len(c) <= 4096 and re.fullmatch("(&amp;)+", c) for c in dense)
    assert html.unescape("".join(dense)) == "&" * 5000
    assert message_chunks(Reply(text="e.g. `2 Hatsune Miku` <b>")) == [
        "e.g. <code>2 Hatsune Miku</code> &lt;b&gt;"
    ]
    markup = keyboard(reply)
    assert markup.inline_keyboard[0][0].callback_data == "more:job"  # type: ignore[union-attr]
    assert keyboard(Reply(text="Who is it?", expects_answer=True)).to_dict() == {  # type: ignore[union-attr]
        "force_reply": True,
        "selective": True,
    }


def test_logs_never_show_the_token(capsys):
    import logging

    from core.logs import configure_logging
    from core.settings import Settings

    token = "123456:AAE-secret_token_value"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for log_json in (False, True):
            configure_logging(Settings(telegram_token=token, log_json=log_json))
            logging.getLogger("httpx").warning(
                "HTTP Request: POST https://api.telegram.org/bot%s/getMe", token
            )
            try:
                raise RuntimeError(f"The token `{token}` was rejected by the server.")
            except RuntimeError:
                logging.getLogger("bot.telegram.app").exception("error abc in a Telegram update")
            assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    err = capsys.readouterr().err
    assert token not in err and err.count("[redacted]") == 4 and "error abc" in err


def test_downloads_stop_at_the_limit_when_telegram_announces_no_size():
    """Telegram may omit ``file_size``: the download is then counted as it streams and cut at the limit (PTB's
    download_as_bytearray read it all), here from a server that would send bytes for ever."""
    import asyncio

    from aiohttp import web

    from bot.telegram.app import download_capped
    from core.vision.intake import IntakeError

    limit = 300_000
    sent = [0]

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length announced
        await response.prepare(request)
        try:
            while sent[0] < 200 * limit:
                await response.write(b"x" * 65_536)
                sent[0] += 65_536
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=b"y" * 1000)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/endless", endless)
        app.router.add_get("/small", small)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        try:
            assert await download_capped(f"{base}/small", limit) == b"y" * 1000
            with pytest.raises(IntakeError) as refused:
                await asyncio.wait_for(download_capped(f"{base}/endless", limit), 30)
            assert refused.value.code == "too_large"
        finally:
            await runner.cleanup()

    asyncio.run(main())
    assert sent[0] < 40 * limit  # the reading stopped near the limit, not at the server's end


# --- "not sure" answers: a chosen result seeded in the result cache (no worker, no models) --------------------


@pytest.fixture
def seeded(redis_kv, tmp_path):  # type: ignore[no-untyped-def]
    from tests.cached_answers import SeededStack

    return SeededStack(tmp_path)


def answer_text(api: FakeBotAPI, chat: int) -> str:
    """Everything the bot said in ``chat``: photo captions and messages, as plain text."""
    said = [c.params.get("caption", "") for c in api.sent("sendPhoto", chat)]
    said += [c.params.get("text", "") for c in api.sent("sendMessage", chat)]
    return plain("\n".join(said))


def plain(telegram_html: str) -> str:
    return html.unescape(re.sub(r"</?(?:b|i|code)>", "", telegram_html))


def keyboard_labels(call) -> list[list[str]]:  # type: ignore[no-untyped-def]
    return [[b["text"] for b in row] for row in call.params["reply_markup"]["inline_keyboard"]]


def press(api: FakeBotAPI, chat: int, user: int, data: str) -> None:
    api.push(
        "callback_query",
        {
            "id": f"cb-{new_id()}",
            "from": {"id": user, "is_bot": False, "first_name": "u"},
            "chat_instance": "ci",
            "data": data,
            "message": api.message(chat, 999, text="result"),
        },
    )


def test_a_low_confidence_head_says_not_sure_with_its_guesses_behind_a_button(seeded):
    from tests.cached_answers import GUESSED_NAMES, picture

    chat = new_id()
    data = picture(7_700_001)
    seeded.seed(data)

    async def scenario(api: FakeBotAPI) -> None:
        api.add_file("ns1", data)
        api.push("message", api.message(chat, chat, photo=api.photo_sizes("ns1")))
        await api.wait_for(lambda: api.sent("sendPhoto", chat), 30)
        first = answer_text(api, chat)
        assert "3 heads found, 1 named, 2 not sure" in first, first
        assert "#1 Hatsune Miku (91%, both agree)" in first
        assert first.count("not sure") == 3  # the title, #2 and #3
        assert not any(name in first for name in GUESSED_NAMES), first
        photo = api.sent("sendPhoto", chat)[0]
        assert keyboard_labels(photo) == [["Show guesses", "More candidates"], ["Wrong? Tell me who"]]
        guesses = photo.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        press(api, chat, chat, guesses)
        await api.wait_for(lambda: api.sent("sendMessage", chat), 30)

    api = run_bot(seeded, scenario)
    assert len(api.sent("answerCallbackQuery")) == 1
    [shown] = api.sent("sendMessage", chat)
    text = plain(shown.params["text"])
    assert "Best guesses (not sure)" in text and "Hatsune Miku" not in text
    assert (
        "#2 not sure\n1. Hoshino Ai (Oshi no Ko): 38%\n2. Hoshino Ruby (Oshi no Ko): 21%, from the tagger"
        in text
    )
    assert "#3 not sure\nnot in my gallery; closest:\n1. Megurine Luka (Vocaloid): 12%" in text
    assert "Arima Kana" in text  # the chat's top_n (3) guesses
    assert len(api.sent("sendPhoto", chat)) == 1  # answered from the stored result: no new picture


def test_the_sure_threshold_is_a_chat_admins_setting_and_changes_the_answer(seeded):
    from tests.cached_answers import picture

    group, member, admin = -new_id(), new_id(), new_id()
    data = picture(7_700_002)
    seeded.seed(data)

    async def scenario(api: FakeBotAPI) -> None:
        api.admins.add((group, admin))
        api.push("message", api.message(group, member, chat_type="group", text="/settings sure 30%"))
        await api.wait_for(lambda: api.sent("sendMessage", group), 30)
        api.push("message", api.message(group, admin, chat_type="group", text="/settings sure 30%"))
        await api.wait_for(lambda: len(api.sent("sendMessage", group)) == 2, 30)
        api.add_file("ns2", data)
        api.push(
            "message",
            api.message(group, member, chat_type="group", caption="/identify", photo=api.photo_sizes("ns2")),
        )
        await api.wait_for(lambda: api.sent("sendPhoto", group), 30)

    api = run_bot(seeded, scenario)
    refused, changed = (plain(c.params["text"]) for c in api.sent("sendMessage", group))
    assert "admins can use /settings" in refused
    assert "sure: 30%" in changed
    caption = plain(api.sent("sendPhoto", group)[0].params["caption"])
    assert "3 heads found, 2 named, 1 not sure" in caption
    assert "#2 Hoshino Ai (38%, from the gallery)" in caption and "Megurine Luka" not in caption
    labels = keyboard_labels(api.sent("sendPhoto", group)[0])
    assert labels[0][0] == "Show guesses"  # the unknown head's guesses
    from core.chat.store import ChatStore
    from core.storage.store import Store

    chats = ChatStore(Store(seeded.settings().sqlalchemy_url))
    assert chats.settings("telegram", str(group)).sure_threshold == pytest.approx(0.3)
