"""The command layer against the real queue: a real Redis and a real worker process (tests/conftest.BotStack)."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace

import pytest

from bot.invocation import IncomingImage, Invocation
from bot.replies import Reply, ReplyKind
from core.chat.store import ChatKind
from core.datasets.synth import render_scene
from tests.conftest import fresh_id

pytestmark = pytest.mark.queue


def scene_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    render_scene(seed).image.save(buffer, format="PNG")
    return buffer.getvalue()


def image(data: bytes, size: int | None = None, name: str = "scene.png") -> IncomingImage:
    async def fetch() -> bytes:
        return data

    return IncomingImage(fetch, size=len(data) if size is None else size, filename=name)


def invocation(*images: IncomingImage, args: str = "", user: str | None = None, **kw: object) -> Invocation:
    return Invocation(
        platform="test", chat_id=fresh_id(), user_id=user or fresh_id(), args=args, images=images, **kw
    )  # type: ignore[arg-type]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_posted_picture_gets_the_annotated_answer(bot_stack):
    layer = bot_stack.layer()
    acks: list[Reply] = []

    async def progress(reply: Reply) -> None:
        acks.append(reply)

    replies = run(layer.images(invocation(image(scene_bytes(4_400_001))), progress, explicit=True))
    assert len(replies) == 1
    reply = replies[0]
    assert reply.kind is ReplyKind.RESULT, reply
    assert reply.image is not None and reply.image.data.startswith(
        b"\xff\xd8\xff"
    )  # the reply picture: a JPEG
    assert "head" in reply.title
    assert any(f.name.startswith("#1") for f in reply.fields)
    actions = [b.action for b in reply.buttons]
    assert actions[-2:] == ["more", "wrong"]
    assert ("guesses" in actions) == ("not sure" in reply.title)  # heads below the chat's sure threshold
    assert acks and acks[0].kind is ReplyKind.ACK


def test_auto_analysis_follows_the_chat_setting(bot_stack):
    layer = bot_stack.layer()
    group = invocation(image(scene_bytes(4_400_002)), chat_kind=ChatKind.GROUP)
    assert run(layer.images(group, explicit=False)) == []  # groups: off by default
    admin_view = replace(group, is_chat_admin=True, args="auto on")
    assert run(layer.command(admin_view, "settings"))[0].kind is ReplyKind.INFO
    replies = run(layer.images(group, explicit=False))
    assert replies and replies[0].kind is ReplyKind.RESULT


def test_settings_are_for_chat_admins_in_groups(bot_stack):
    layer = bot_stack.layer()
    member = invocation(args="auto on", chat_kind=ChatKind.GROUP)
    reply = run(layer.command(member, "settings"))[0]
    assert reply.kind is ReplyKind.REFUSAL
    assert not layer.chats.settings("test", member.chat_id).auto_analyze


def test_refusals_for_bad_and_oversized_input(bot_stack):
    layer = bot_stack.layer(max_image_bytes=64 * 1024)
    fetched = []

    async def never() -> bytes:
        fetched.append(True)
        return b""

    big = IncomingImage(never, size=10 * 1024 * 1024, filename="big.png")
    reply = run(layer.images(invocation(big), explicit=True))[0]
    assert reply.kind is ReplyKind.REFUSAL and "too large" in reply.text
    assert not fetched, "an oversized file was downloaded"
    text = run(layer.images(invocation(image(b"hello, not a picture")), explicit=True))[0]
    assert text.kind is ReplyKind.REFUSAL and "image" in text.text.lower()


def test_rate_limit_and_one_job_per_user(bot_stack):
    layer = bot_stack.layer(rate_user_burst=2, rate_user_per_min=1.0)
    user = fresh_id()
    data = scene_bytes(4_400_003)
    first = run(layer.images(invocation(image(data), image(data), user=user), explicit=True))
    assert all(r.kind is ReplyKind.RESULT for r in first)
    limited = run(layer.images(invocation(image(data), user=user), explicit=True))[0]
    assert limited.kind is ReplyKind.REFUSAL and "Slow down" in limited.text

    busy_layer = bot_stack.layer()
    inv = invocation(image(data))
    slot = f"{inv.platform}:{inv.chat_id}:{inv.user_id}"
    assert busy_layer.active.acquire(slot, "another-job")
    reply = run(busy_layer.images(inv, explicit=True))[0]
    assert reply.kind is ReplyKind.REFUSAL and "previous picture" in reply.text


def test_more_candidates_and_a_correction_are_kept(bot_stack):
    layer = bot_stack.layer()
    inv = invocation(image(scene_bytes(4_400_004)))
    result = run(layer.images(inv, explicit=True))[0]
    more = next(b for b in result.buttons if b.action == "more")
    listing = run(layer.button(inv, more.callback_data))[0]
    assert listing.kind is ReplyKind.RESULT and listing.fields
    assert sum(f.value.count("\n") + 1 for f in listing.fields) >= sum(
        f.value.count("\n") + 1 for f in result.fields if f.name.startswith("#")
    )
    wrong = next(b for b in result.buttons if b.action == "wrong")
    question = run(layer.button(inv, wrong.callback_data))[0]
    assert question.expects_answer
    answer = replace(inv, args="1 Hoshino Ai", images=())
    thanks = run(layer.text(answer))[0]
    assert "Hoshino Ai" in thanks.text
    stored = layer.chats.corrections(job_id=wrong.payload)
    assert [(c.head, c.name, c.user_id) for c in stored] == [(1, "Hoshino Ai", inv.user_id)]
    assert run(layer.text(answer)) == []  # the question was answered once


def test_result_buttons_work_only_in_their_chat_and_answers_only_after_the_question(bot_stack):
    """A finished job's id pressed from another chat or platform is as good as expired, and the answer handler is
    no button: pressing ``wrong.answer:<job> <name>`` cannot skip the question."""
    layer = bot_stack.layer()
    inv = invocation(image(scene_bytes(4_400_005)))
    result = run(layer.images(inv, explicit=True))[0]
    job_id = result.data["job_id"]
    elsewhere = (replace(inv, chat_id=fresh_id(), images=()), replace(inv, platform="discord", images=()))
    for stranger in elsewhere:
        for action in ("more", "wrong"):
            refused = run(layer.button(stranger, f"{action}:{job_id}"))[0]
            assert refused.kind is ReplyKind.REFUSAL and refused.code == "expired", (
                stranger.platform,
                action,
            )
    skipped = run(layer.button(inv, f"wrong.answer:{job_id} 1 Hoshino Ai"))[0]
    assert skipped.kind is ReplyKind.REFUSAL and skipped.code == "expired"
    assert run(layer.text(replace(inv, args="1 Hoshino Ai", images=()))) == []  # nobody asked
    assert layer.chats.corrections(job_id=job_id) == []
    assert run(layer.button(inv, f"more:{job_id}"))[0].kind is ReplyKind.RESULT  # in its own chat: fine


ADMIN_COMMANDS = ("addcharacter", "removecharacter", "characters", "retrain", "reindex", "jobs", "review")


@pytest.mark.parametrize("platform", ["telegram", "discord", "api"])
def test_admin_commands_are_refused_to_others_and_logged(bot_stack, caplog, platform):
    from bot.registry import Permission

    layer = bot_stack.layer()
    admin_only = {c.name for c in layer.commands.all() if c.permission is Permission.BOT_ADMIN}
    assert admin_only == set(ADMIN_COMMANDS)  # a new admin command must be added here, and so be tested
    backlog_before = run(layer.waiter.backlog("train"))
    for name in sorted(admin_only):
        for args in ("Someone", "cancel abcdef12", "identifier"):
            inv = Invocation(platform=platform, chat_id=fresh_id(), user_id=fresh_id(), args=args)
            reply = run(layer.command(inv, name))[0]
            assert reply.kind is ReplyKind.REFUSAL and "admins only" in reply.text, (platform, name)
            assert reply.code == "forbidden"
    assert sum("refused /" in r.getMessage() for r in caplog.records) == 3 * len(admin_only)
    assert run(layer.waiter.backlog("train")) == backlog_before  # nothing was queued
    assert "/addcharacter" not in run(layer.command(invocation(), "help"))[0].text


def test_an_admin_adds_and_removes_a_character_through_the_train_queue(bot_stack):
    from core.datasets.synth import CAST, render_portrait

    layer = bot_stack.layer()
    refs = []
    for seed in range(3):
        buffer = io.BytesIO()
        render_portrait(CAST[0].key, seed=9_000 + seed).save(buffer, format="PNG")
        refs.append(image(buffer.getvalue(), name=f"ref{seed}.png"))
    admin = invocation(*refs, args="Test Person | Test Series", user="admin")
    reply = run(layer.command(admin, "addcharacter"))[0]
    assert reply.kind is ReplyKind.RESULT, reply
    assert reply.data["name"] == "Test Person" and reply.data["references"] == 3
    listing = run(layer.command(invocation(user="admin"), "characters"))[0]
    assert "Test Person (Test Series): 3 refs" in listing.text
    jobs = run(layer.command(invocation(user="admin"), "jobs"))[0]
    assert "characters.add" in jobs.text
    removed = run(
        layer.command(invocation(args="Test Person | Test Series", user="admin"), "removecharacter")
    )[0]
    assert removed.kind is ReplyKind.RESULT and "Removed" in removed.text
    bad = run(layer.command(invocation(args="../etc/passwd", user="admin"), "removecharacter"))[0]
    assert bad.kind is ReplyKind.REFUSAL


def test_no_worker_means_unavailable_not_a_hang(bot_stack):
    from tests.conftest import IDLE_REDIS_URL

    layer = bot_stack.layer(redis_url=IDLE_REDIS_URL, unavailable_after_s=1.0)
    layer.client.kv.client.flushdb()
    reply = run(asyncio.wait_for(layer.images(invocation(image(scene_bytes(4_400_005))), explicit=True), 30))[
        0
    ]
    assert reply.kind is ReplyKind.REFUSAL and "unavailable" in reply.text


def test_catalogue_commands_through_the_cpu_worker(bot_stack):
    layer = bot_stack.layer()
    user = fresh_id()
    reply = run(layer.command(invocation(args="Cowboy Bebop", user=user), "recommend"))[0]
    assert reply.kind is ReplyKind.RESULT, reply
    assert reply.title == "If you liked Cowboy Bebop"
    assert len(reply.fields) == 5 and all(f.value for f in reply.fields)  # each with its reason
    more = next(b for b in reply.buttons if b.action == "recmore")
    page_two = run(layer.button(invocation(user=user), more.callback_data))[0]
    assert page_two.fields[0].name.startswith("6. ")
    assert {f.name for f in page_two.fields}.isdisjoint({f.name for f in reply.fields})
    details = run(layer.command(invocation(args="cowboy bebob"), "anime"))[0]  # a typo
    assert details.title == "Cowboy Bebop" and "myanimelist.net/anime/1" in details.footer
    missing = run(layer.command(invocation(args="zzzz qqqq xxxx"), "anime"))[0]
    assert missing.kind is ReplyKind.REFUSAL
    added = run(layer.command(invocation(args="add Trigun", user=user), "fav"))[0]
    assert "Trigun" in added.text
    from_favourites = run(layer.command(invocation(user=user), "recommend"))[0]
    assert (
        from_favourites.kind is ReplyKind.RESULT
        and "Trigun" not in from_favourites.plain_text().split("\n")[0]
    )


def test_a_user_has_a_byte_budget(bot_stack):
    """ANIBOT_USER_BYTES_PER_HOUR bounds what one user can make Redis hold: past it, a clear refusal."""
    data = scene_bytes(4_400_031)
    budget = len(data) * 3 // 2  # room for one picture, not two
    layer = bot_stack.layer(max_image_bytes=len(data) + 1, user_bytes_per_hour=budget)
    user = fresh_id()
    first = run(layer.images(invocation(image(data), user=user), explicit=True))
    assert first[0].kind is ReplyKind.RESULT, first
    [second] = run(layer.images(invocation(image(data), user=user), explicit=True))
    assert second.kind is ReplyKind.REFUSAL and second.code == "rate_limited", second
    assert "picture data" in second.text and second.data and second.data["retry_after_s"] >= 1
    other = run(layer.images(invocation(image(data)), explicit=True))  # another user is not affected
    assert other[0].kind is ReplyKind.RESULT, other


def test_ten_pictures_cost_ten_tokens(bot_stack):
    """An album beyond the user's burst: the first pictures the bucket allows are answered, the rest are told."""
    layer = bot_stack.layer(rate_user_burst=2, rate_user_per_min=1.0)
    data = scene_bytes(4_400_041)
    replies = run(layer.images(invocation(*(image(data, name=f"p{i}.png") for i in range(5))), explicit=True))
    results = [r for r in replies if r.kind is ReplyKind.RESULT]
    notes = [r for r in replies if r.code == "rate_limited"]
    assert len(results) == 2 and len(notes) == 1, replies
    assert "first 2 of 5" in notes[0].text


def test_commands_and_buttons_are_rate_limited(bot_stack):
    layer = bot_stack.layer(rate_command_burst=2, rate_command_per_min=1.0)
    user = fresh_id()
    first = run(layer.command(invocation(user=user), "help"))
    assert first[0].kind is not ReplyKind.REFUSAL
    run(layer.button(invocation(user=user), "more:" + "0" * 32))  # a button press costs a token too
    [refused] = run(layer.command(invocation(user=user), "help"))
    assert refused.code == "rate_limited" and "too many commands" in refused.text
    assert (
        run(layer.command(invocation(), "help"))[0].kind is not ReplyKind.REFUSAL
    )  # others are not affected


def test_show_guesses_answers_from_the_stored_result_in_its_own_chat_only(redis_kv, tmp_path):
    """Over a result seeded in the result cache (no worker): the guesses of the heads the answer was not sure of,
    by the chat's threshold at the press; from another chat, or for no job, the button has expired."""
    from tests.cached_answers import SeededStack, picture

    stack = SeededStack(tmp_path)
    data = picture(7_700_401)
    stack.seed(data)
    layer = stack.layer()
    inv = invocation(image(data))
    [answer] = run(layer.images(inv, explicit=True))
    assert answer.title == "3 heads found, 1 named, 2 not sure" and answer.buttons[0].action == "guesses"
    press = answer.buttons[0].callback_data
    [guesses] = run(layer.button(replace(inv, images=()), press))
    assert [f.name for f in guesses.fields] == ["#2 not sure", "#3 not sure"]
    assert layer.client.cache.pipeline_runs() == 0  # no analysis ran for it

    for stranger in (
        replace(inv, chat_id=fresh_id(), images=()),
        replace(inv, platform="discord", images=()),
    ):
        refused = run(layer.button(stranger, press))[0]
        assert refused.kind is ReplyKind.REFUSAL and refused.code == "expired"
    assert run(layer.button(inv, "guesses:" + "0" * 32))[0].code == "expired"

    admin = replace(inv, chat_kind=ChatKind.GROUP, is_chat_admin=True, args="sure 30%", images=())
    assert run(layer.command(admin, "settings"))[0].kind is ReplyKind.INFO
    [fewer] = run(layer.button(replace(inv, images=()), press))
    assert [f.name for f in fewer.fields] == ["#3 not sure"]  # Hoshino Ai (38%) is named now
