"""The Discord front-end driven by dpytest against the real command layer, queue and worker (tests/conftest)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import discord.ext.test as dpytest
import discord.ext.test.backend as back
import discord.ext.test.factories as facts
import pytest
import pytest_asyncio
from discord.http import MultipartParameters

from bot.discord.app import ACK_EMOJI, CONTEXT_MENU, build_bot, run, send_reply
from bot.discord.render import EMBED_LIMIT, MESSAGE_LIMIT, render
from bot.layer import CommandLayer
from bot.replies import CUT_NOTE, MAX_MESSAGES, Button, Reply, ReplyField, ReplyImage, ReplyKind
from core.datasets.synth import render_scene

pytestmark = pytest.mark.queue

REPO = Path(__file__).resolve().parents[1]

ADMIN_ROLE = "anibot admins"
MANAGE_GUILD = discord.Permissions(104324161 | discord.Permissions(manage_guild=True).value)


# --- dpytest plumbing --------------------------------------------------------------------------------------


@pytest.fixture
def sent_payloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict]:
    """Every message payload the bot sent. dpytest reads content and embeds from ``params.payload``, which
    discord.py 2 empties when files go along (they move into the multipart ``payload_json``): put them back."""
    monkeypatch.chdir(tmp_path)  # dpytest stores sent files as ./dpytest_N.dat
    payloads: list[dict] = []
    original = back.FakeHttp.send_message

    async def send_message(self: back.FakeHttp, channel_id: int, *, params: MultipartParameters) -> Any:
        channel = sys._getframe(1).f_locals.get("channel")  # noqa: F841  (dpytest reads its caller's `channel`)
        if params.payload is None and params.multipart:
            payload = json.loads(next(p["value"] for p in params.multipart if p["name"] == "payload_json"))
            params = MultipartParameters(payload=payload, multipart=params.multipart, files=params.files)
        payloads.append(params.payload or {})
        return await original(self, channel_id, params=params)

    monkeypatch.setattr(back.FakeHttp, "send_message", send_message)
    return payloads


@pytest_asyncio.fixture
async def discord_bot(bot_stack, sent_payloads):  # type: ignore[no-untyped-def]
    yield await dpytest_bot(bot_stack.settings())
    await dpytest.empty_queue()


async def dpytest_bot(settings: Any) -> discord.Client:
    """The bot over ``settings``, configured for dpytest: two members, a guild with channels."""
    bot = build_bot(settings, CommandLayer.from_settings(settings))
    await bot._async_setup_hook()
    # dpytest's members exist only in the member cache, which needs the members intent; the bot itself does
    # without it (a message or an interaction carries its author's roles and permissions)
    bot._connection._intents.members = True
    bot._connection.member_cache_flags = discord.MemberCacheFlags.from_intents(bot._connection._intents)
    dpytest.configure(bot, members=2)
    state = back.get_state()
    parse_reaction = state.parse_message_reaction_add
    # dpytest 0.7 leaves out the reaction type that discord.py 2.7 reads
    state.parse_message_reaction_add = lambda data: parse_reaction({"type": 0, **data})
    return bot


def scene_file(seed: int, folder: Path) -> Path:
    path = folder / f"scene-{seed}.png"
    render_scene(seed).image.save(path, format="PNG")
    return path


async def post(author: discord.abc.User, channel: Any, content: str = "", files: tuple[Path, ...] = ()):  # type: ignore[no-untyped-def]
    message = back.make_message(
        content, author, channel, attachments=[back.make_attachment(path) for path in files]
    )
    await dpytest.run_all_events()
    return message


def sent() -> list[discord.Message]:
    messages = []
    while not dpytest.sent_queue.empty():
        messages.append(dpytest.get_message())
    return messages


def mention(bot: discord.Client) -> str:
    assert bot.user is not None
    return f"<@{bot.user.id}>"


def reactions(message: discord.Message) -> set[str]:
    return {str(r.emoji) for r in message.reactions}


class FakeInteraction:
    """Just what the front-end touches of a component or slash interaction (dpytest has none)."""

    def __init__(self, user: discord.abc.User, channel: Any, custom_id: str = "") -> None:
        self.type = discord.InteractionType.component
        self.data = {"custom_id": custom_id}
        self.user = user
        self.channel = channel
        self.channel_id = channel.id
        self.guild = getattr(channel, "guild", None)
        self.message = None
        self.deferred = False
        self.sent: list[dict] = []
        self.response = SimpleNamespace(defer=self._defer, is_done=lambda: self.deferred)
        self.followup = SimpleNamespace(send=self._send)

    async def _defer(self, **_: Any) -> None:
        self.deferred = True

    async def _send(self, **kwargs: Any) -> None:
        assert self.deferred, "answered before deferring"
        self.sent.append(kwargs)

    async def edit_original_response(self, **kwargs: Any) -> None:
        self.sent.append(kwargs)


# --- pictures -------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_picture_in_a_dm_gets_the_annotated_answer_and_its_buttons_work(
    discord_bot, sent_payloads, tmp_path
):
    member = dpytest.get_config().members[0]
    dm = await member.create_dm()
    posted = await post(member._user, dm, files=(scene_file(5_500_001, tmp_path),))
    [answer] = sent()
    assert ACK_EMOJI in reactions(posted)
    embed = answer.embeds[0]
    assert "head" in (embed.title or "")
    names = [f.name for f in embed.fields]
    assert any(name.startswith("#1") for name in names) and "Tags" in names, names
    [attachment] = answer.attachments
    assert attachment.filename.startswith("anibot-") and attachment.filename.endswith(".jpg")
    assert Path(attachment.filename).name in (embed.image.url or "")
    assert Path(
        back.urllib.request.url2pathname(back.urllib.parse.urlparse(attachment.url).path)
    ).read_bytes()[:3] == (b"\xff\xd8\xff")  # the reply picture is a JPEG
    custom_ids = [c["custom_id"] for row in sent_payloads[-1]["components"] for c in row["components"]]
    actions = [Button.parse(c)[0] for c in custom_ids]
    assert actions[-2:] == ["more", "wrong"]
    assert ("guesses" in actions) == any(name.endswith("not sure") for name in names)  # below the threshold

    more = FakeInteraction(member._user, dm, custom_ids[actions.index("more")])
    await discord_bot.on_interaction(more)
    assert more.sent and more.sent[-1]["embed"].title == "All candidates"

    wrong = FakeInteraction(member._user, dm, custom_ids[actions.index("wrong")])
    await discord_bot.on_interaction(wrong)
    assert wrong.sent[-1]["content"].startswith("Who is it?")
    await post(member._user, dm, "1 Hoshino Ai")
    [thanks] = sent()
    assert "Hoshino Ai" in (thanks.content or "")


@pytest.mark.asyncio
async def test_a_guild_channel_answers_pictures_when_mentioned_or_when_auto_analysis_is_on(
    discord_bot, tmp_path
):
    config = dpytest.get_config()
    channel, member, manager = config.channels[0], config.members[0], config.members[1]
    picture = scene_file(5_500_002, tmp_path)
    quiet = await post(member, channel, "look at this", files=(picture,))
    assert sent() == [] and not reactions(quiet)  # auto-analysis is off in guilds by default

    asked = await post(member, channel, f"{mention(discord_bot)} who is this?", files=(picture,))
    [answer] = sent()
    assert ACK_EMOJI in reactions(asked)
    assert answer.embeds and answer.attachments and any(f.name == "Tags" for f in answer.embeds[0].fields)

    await post(member, channel, "!settings auto on")
    [refused] = sent()
    assert "Only this chat's admins" in (refused.content or "")
    role = back.make_role("Managers", channel.guild, permissions=MANAGE_GUILD.value)
    await dpytest.add_role(manager, role)
    await post(manager, channel, "!settings auto on")
    [changed] = sent()
    assert any(f.name == "auto: on" for f in changed.embeds[0].fields)

    await post(member, channel, files=(picture,))  # answered from the result cache
    [auto] = sent()
    assert auto.embeds and "cached" in (auto.embeds[0].footer.text or "")


@pytest.mark.asyncio
async def test_an_oversized_attachment_is_refused_without_downloading_it(discord_bot, monkeypatch):
    downloads: list[str] = []

    async def get_from_cdn(self: back.FakeHttp, url: str) -> bytes:
        downloads.append(url)
        return b""

    monkeypatch.setattr(back.FakeHttp, "get_from_cdn", get_from_cdn)
    member = dpytest.get_config().members[0]
    dm = await member.create_dm()
    huge = discord.Attachment(
        state=back.get_state(),
        data=facts.make_attachment_dict("huge.png", 200 * 1024 * 1024, "file:///nowhere/huge.png", ""),
    )
    back.make_message("", member._user, dm, attachments=[huge])
    await dpytest.run_all_events()
    [refused] = sent()
    assert "too large" in (refused.content or "") and downloads == []


# --- "not sure" answers: a chosen result seeded in the result cache (no worker, no models) --------------------


@pytest_asyncio.fixture
async def seeded_bot(redis_kv, sent_payloads, tmp_path):  # type: ignore[no-untyped-def]
    from tests.cached_answers import SeededStack

    stack = SeededStack(tmp_path)
    bot = await dpytest_bot(stack.settings())
    bot.seeded = stack  # type: ignore[attr-defined]
    yield bot
    await dpytest.empty_queue()


def seeded_picture(bot: discord.Client, seed: int, folder: Path) -> Path:
    from tests.cached_answers import picture

    data = picture(seed)
    bot.seeded.seed(data)  # type: ignore[attr-defined]
    path = folder / f"seeded-{seed}.png"
    path.write_bytes(data)
    return path


def embed_text(embed: discord.Embed) -> str:
    return "\n".join([embed.title or "", *(f"{f.name}\n{f.value}" for f in embed.fields)])


@pytest.mark.asyncio
async def test_a_low_confidence_head_says_not_sure_and_show_guesses_answers_from_the_result(
    seeded_bot, sent_payloads, tmp_path
):
    from tests.cached_answers import GUESSED_NAMES

    member = dpytest.get_config().members[0]
    dm = await member.create_dm()
    await post(member._user, dm, files=(seeded_picture(seeded_bot, 7_700_101, tmp_path),))
    [answer] = sent()
    embed = answer.embeds[0]
    assert embed.title == "3 heads found, 1 named, 2 not sure"
    assert [f.name for f in embed.fields[:3]] == [
        "#1 Hatsune Miku (91%, both agree)",
        "#2 not sure",
        "#3 not sure",
    ]
    assert not any(name in embed_text(embed) for name in GUESSED_NAMES), embed_text(embed)
    components = [c for row in sent_payloads[-1]["components"] for c in row["components"]]
    assert [c["label"] for c in components] == ["Show guesses", "More candidates", "Wrong? Tell me who"]
    assert Button.parse(components[0]["custom_id"])[0] == "guesses"

    pressed = FakeInteraction(member._user, dm, components[0]["custom_id"])
    await seeded_bot.on_interaction(pressed)
    guesses = pressed.sent[-1]["embed"]
    assert guesses.title == "Best guesses (not sure)" and "Hatsune Miku" not in embed_text(guesses)
    fields = {f.name: f.value for f in guesses.fields}
    assert set(fields) == {"#2 not sure", "#3 not sure"}
    assert "Hoshino Ai (Oshi no Ko): 38%" in fields["#2 not sure"]
    assert "Hoshino Ruby (Oshi no Ko): 21%, from the tagger" in fields["#2 not sure"]
    assert "Megurine Luka (Vocaloid): 12%" in fields["#3 not sure"]
    assert sent() == []  # the press was answered in its interaction, from the stored result


@pytest.mark.asyncio
async def test_only_a_chat_admin_changes_the_sure_threshold_and_it_changes_the_answer(seeded_bot, tmp_path):
    config = dpytest.get_config()
    channel, member, manager = config.channels[0], config.members[0], config.members[1]
    await post(member, channel, "!settings sure 0.3")
    [refused] = sent()
    assert "Only this chat's admins" in (refused.content or "")
    role = back.make_role("Managers", channel.guild, permissions=MANAGE_GUILD.value)
    await dpytest.add_role(manager, role)
    await post(manager, channel, "!settings sure 0.3")
    [changed] = sent()
    assert any(f.name == "sure: 30%" for f in changed.embeds[0].fields)
    await post(manager, channel, "!settings sure 2")
    [bad] = sent()
    assert "Bad value for sure" in (bad.content or "")

    picture = seeded_picture(seeded_bot, 7_700_102, tmp_path)
    await post(member, channel, f"{mention(seeded_bot)} who?", files=(picture,))
    [answer] = sent()
    embed = answer.embeds[0]
    assert embed.title == "3 heads found, 2 named, 1 not sure"
    assert embed.fields[1].name == "#2 Hoshino Ai (38%, from the gallery)"
    assert "Megurine Luka" not in embed_text(embed)
    other = dpytest.get_config().members[0]
    dm = await other.create_dm()  # another chat keeps the default: Hoshino Ai is "not sure" there
    await post(other._user, dm, files=(picture,))
    [private] = sent()
    assert private.embeds[0].fields[1].name == "#2 not sure"


# --- commands -------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_typed_commands_reach_the_layer(discord_bot):
    channel, member = dpytest.get_config().channels[0], dpytest.get_config().members[0]
    await post(member, channel, "!help")
    [help_answer] = sent()
    assert "/identify" in (help_answer.embeds[0].description or "")
    assert "/addcharacter" not in (help_answer.embeds[0].description or "")
    await post(member, channel, f"{mention(discord_bot)} stats")
    [stats] = sent()
    assert stats.embeds[0].title == "Statistics"
    await post(member, channel, f"{mention(discord_bot)} thanks")  # a bare mention: what the bot does
    assert "/identify" in (sent()[0].embeds[0].description or "")
    await post(member, channel, "just chatting")
    assert sent() == []


@pytest.mark.asyncio
async def test_admin_commands_are_for_the_admin_ids_and_the_admin_role(discord_bot):
    config = dpytest.get_config()
    channel, member = config.channels[0], config.members[0]
    for command in ("addcharacter", "removecharacter", "characters", "retrain", "reindex", "jobs", "review"):
        await post(member, channel, f"!{command} x")
        [refused] = sent()
        assert f"/{command} is for bot admins only" in (refused.content or ""), command

    admin_user = back.make_user("Admin", "0042", id_num=1001)
    admin = back.make_member(admin_user, channel.guild)
    await post(admin, channel, "!characters")
    [listing] = sent()
    assert listing.embeds and listing.embeds[0].title.endswith("characters")

    # a role named like the admins' one grants nothing: only its id counts (anyone can name a role)
    impostor = back.make_role(ADMIN_ROLE, channel.guild)
    await dpytest.add_role(member, impostor)
    await post(member, channel, "!characters")
    assert "/characters is for bot admins only" in (sent()[0].content or "")

    role = back.make_role("moderators", channel.guild)
    await dpytest.add_role(member, role)
    # the right role id, but listed for another server: not an admin here
    discord_bot.settings = settings_with(discord_bot, discord_admin_roles=f"{channel.guild.id + 1}:{role.id}")
    await post(member, channel, "!characters")
    assert "/characters is for bot admins only" in (sent()[0].content or "")

    discord_bot.settings = settings_with(discord_bot, discord_admin_roles=f"{channel.guild.id}:{role.id}")
    await post(member, channel, "!characters")
    assert sent()[0].embeds[0].title.endswith("characters")


def settings_with(bot: discord.Client, **changes: Any) -> Any:
    return bot.settings.model_copy(update=changes)  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_slash_commands_and_the_context_menu_come_from_the_layer(discord_bot):
    commands = {c.name: c.to_dict(discord_bot.tree) for c in discord_bot.tree.get_commands()}
    assert set(commands) >= {"identify", "help", "settings", "characters", CONTEXT_MENU}
    assert [(o["name"], o["required"]) for o in commands["identify"]["options"]] == [("picture", True)]
    assert [o["name"] for o in commands["characters"]["options"]] == ["series"]
    assert commands["help"]["options"] == []

    member = dpytest.get_config().members[0]
    interaction = FakeInteraction(member, dpytest.get_config().channels[0])
    await discord_bot.tree.get_command("settings").callback(interaction, change="auto on")
    assert "Only this chat's admins" in interaction.sent[-1]["content"]
    await discord_bot.tree.get_command("help").callback(interaction)
    assert interaction.sent[-1]["embed"].title == "anibot"


@pytest.mark.asyncio
async def test_an_unexpected_error_is_logged_with_context_and_answered_with_its_id(
    discord_bot, monkeypatch, caplog
):
    config = dpytest.get_config()
    channel, member = config.channels[0], config.members[0]

    async def broken(*args: Any, **kwargs: Any) -> list[Reply]:
        raise RuntimeError("boom")

    monkeypatch.setattr(discord_bot.layer, "command", broken)
    monkeypatch.setattr(discord_bot.layer, "text", broken)
    for content in ("!help", "just chatting"):  # a command (on_command_error), an event (on_error)
        await post(member, channel, content)
        [sorry] = sent()
        match = re.search(r"error ([0-9a-f]{8})", sorry.content or "")
        assert match, sorry.content
        [record] = [r for r in caplog.records if match.group(1) in r.getMessage()]
        assert record.exc_info and f"chat={channel.id}" in record.getMessage()
        assert f"user={member.id}" in record.getMessage()


# --- rendering ------------------------------------------------------------------------------------------------


def picture_reply(*, spoiler: bool) -> Reply:
    return Reply(
        kind=ReplyKind.RESULT,
        title="1 head found, 1 named",
        text="A girl with aqua hair.",
        fields=(
            ReplyField("#1 Hatsune Miku (91%)", "1. Hatsune Miku: 91%"),
            ReplyField("Rating", "questionable"),
        ),
        image=ReplyImage(b"\x89PNG fake", "anibot-0123456789ab.png", spoiler=spoiler),
        buttons=(Button("More candidates", "more", "f" * 32),),
        footer="job ffffffff",
    )


@pytest.mark.asyncio
async def test_a_spoiler_image_is_sent_hidden_outside_the_embed_except_in_nsfw_channels():
    [hidden] = render(picture_reply(spoiler=True))
    assert hidden.file is not None and hidden.file.filename == "SPOILER_anibot-0123456789ab.png"
    assert hidden.embed is not None and not hidden.embed.image.url  # embed images are never blurred
    [shown] = render(picture_reply(spoiler=True), channel_nsfw=True)
    assert shown.file is not None and shown.file.filename == "anibot-0123456789ab.png"
    assert shown.embed is not None and shown.embed.image.url == "attachment://anibot-0123456789ab.png"
    assert shown.view is not None and [c.custom_id for c in shown.view.children] == ["more:" + "f" * 32]


@pytest.mark.asyncio
async def test_long_replies_stay_within_discord_limits_and_lose_nothing():
    fields = tuple(ReplyField(f"#{i} Someone", "x" * 300 + f" end{i}", inline=True) for i in range(20))
    reply = Reply(
        title="T" * 300, text="word " * 300, fields=(*fields, ReplyField("", "y" * 2500)), footer="f"
    )
    messages = render(reply)
    assert 1 < len(messages) <= MAX_MESSAGES
    embed = messages[0].embed
    assert embed is not None and len(embed) <= EMBED_LIMIT and len(embed.fields) <= 25
    assert len(embed.title or "") <= 256 and all(len(f.value or "") <= 1024 for f in embed.fields)
    assert all(m.content and len(m.content) <= MESSAGE_LIMIT for m in messages[1:])
    everything = " ".join([embed.description or "", *(f.value or "" for f in embed.fields)]) + " ".join(
        m.content or "" for m in messages[1:]
    )
    assert all(f"end{i}" in everything for i in range(20)) and everything.count("y") >= 2500

    # a reply far too long for a chat (hundreds of heads' worth) takes at most MAX_MESSAGES, and says so
    huge = Reply(title="T", fields=tuple(ReplyField(f"#{i}", "x" * 900) for i in range(300)))
    capped = render(huge)
    assert len(capped) == MAX_MESSAGES and capped[-1].content == CUT_NOTE
    assert len(render(Reply(text="z " * 20_000))) == MAX_MESSAGES

    [question] = render(Reply(text="Who is it? Reply with the character's name.", expects_answer=True))
    assert question.content and question.embed is None


@pytest.mark.asyncio
async def test_user_text_is_shown_literally_never_as_markdown_or_mentions(discord_bot):
    """``/anime [Free Nitro](https://x) <@id>`` once posted a masked link and pinged: user text echoed back is
    escaped, the layer's `code` examples stay code, and the bot allows no mention at all."""
    echoed = "[Free Nitro](https://x) <@123456789012345678> @everyone **loud**"
    [plain] = render(Reply(text=f"I don't know {echoed}. Try `/anime Cowboy Bebop`."))
    assert plain.content is not None
    assert "\\[Free Nitro](https://x)" in plain.content and "\\*\\*loud\\*\\*" in plain.content
    assert "<@123456789012345678>" not in plain.content and "@everyone" not in plain.content
    assert "`/anime Cowboy Bebop`" in plain.content
    [card] = render(
        Reply(title=f"# {echoed}", text="ok\n# heading on a later line", fields=(ReplyField("> q", echoed),),
              footer="||spoiler||")
    )  # fmt: skip
    embed = card.embed
    assert embed is not None and embed.title is not None and embed.title.startswith("\\#")
    assert "\n\\# heading" in (embed.description or "")
    assert embed.fields[0].name == "\\> q" and "<@123456789012345678>" not in (embed.fields[0].value or "")
    assert embed.footer.text == "\\|\\|spoiler\\|\\|"
    mentions = build_bot(discord_bot.settings, discord_bot.layer).allowed_mentions  # dpytest replaces its own
    assert mentions is not None and not (mentions.everyone or mentions.users or mentions.roles)


@pytest.mark.asyncio
async def test_a_refused_picture_still_gets_the_text_answer():
    """Discord refuses the attachment (413, say a server's lower upload limit): the answer goes again without it."""
    sent_messages: list[Any] = []

    async def first(outgoing: Any) -> None:
        if outgoing.file is not None:
            raise discord.HTTPException(SimpleNamespace(status=413, reason="Payload Too Large"), "too large")
        sent_messages.append(outgoing)

    async def rest(outgoing: Any) -> None:
        sent_messages.append(outgoing)

    from bot.invocation import Invocation

    inv = Invocation(platform="discord", chat_id="1", user_id="2")
    await send_reply(picture_reply(spoiler=False), inv, first, rest)
    assert len(sent_messages) == 1 and sent_messages[0].file is None
    embed = sent_messages[0].embed
    assert embed is not None and not embed.image.url and embed.fields
    assert sent_messages[0].view is not None  # the buttons still come with it

    async def broken(outgoing: Any) -> None:  # any other failure is not hidden
        raise discord.HTTPException(SimpleNamespace(status=500, reason="Server Error"), "down")

    with pytest.raises(discord.HTTPException):
        await send_reply(picture_reply(spoiler=False), inv, broken, rest)

    # an attachment over Discord's default 10 MiB is never tried: the text goes alone
    big = Reply(title="t", fields=(ReplyField("a", "b"),), image=ReplyImage(b"x" * (11 << 20), "big.jpg"))
    [alone] = render(big)
    assert alone.file is None and alone.embed is not None


def test_run_refuses_without_a_token():
    from core.settings import Settings

    with pytest.raises(ValueError, match="ANIBOT_DISCORD_TOKEN"):
        run(Settings(discord_token=None))


def test_the_front_end_imports_no_model_library():
    code = "import sys, bot.discord.app; print([m for m in ('torch', 'onnxruntime', 'timm') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
