"""The front-ends' building blocks on their own: replies, names, chat settings, token buckets, the registry."""

from __future__ import annotations

import uuid

import pytest

from bot.registry import COMMANDS, Permission
from bot.replies import Button, Reply, ReplyField, split_text
from core.characters.names import BadName, normalise_name, split_name_and_series
from core.chat.ratelimit import ActiveJobs, BucketRule, TokenBuckets
from core.chat.store import ChatKind, ChatSettings, ChatStore, Correction, TitleLanguage
from core.storage.store import Store


def test_split_text_keeps_every_word_within_the_limit():
    text = "\n\n".join(f"paragraph {i} " + "word " * 60 for i in range(12))
    chunks = split_text(text, 1024)
    assert all(len(c) <= 1024 for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())
    assert split_text("x" * 2500, 1000) == ["x" * 1000, "x" * 1000, "x" * 500]


def test_button_callback_data_fits_telegram():
    job = uuid.uuid4().hex
    assert Button.parse(Button("More candidates", "more", job).callback_data) == ("more", job)
    with pytest.raises(ValueError):
        _ = Button("x", "more", "y" * 70).callback_data


def test_plain_text_reads_in_order():
    reply = Reply(title="T", text="body", fields=(ReplyField("#1 Aoi", "1. Aoi: 90%"),), footer="job 1")
    assert reply.plain_text() == "T\n\nbody\n\n#1 Aoi\n1. Aoi: 90%\n\njob 1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hoshino  Ai | Blue Archive", ("Hoshino Ai", "Blue Archive")),
        ("Rem (Re:Zero)", ("Rem", "Re:Zero")),
        ("初音ミク", ("初音ミク", "")),
        ("Jean-Luc O'Brien", ("Jean-Luc O'Brien", "")),
    ],
)
def test_names_are_normalised(text, expected):
    assert split_name_and_series(text) == expected


@pytest.mark.parametrize(
    "bad", ["", "   ", "../etc/passwd", "a/b", ".hidden", "x" * 101, "<script>", "snake_case"]
)
def test_bad_names_are_refused(bad):
    with pytest.raises(BadName):
        normalise_name(bad)


def test_chat_settings_defaults_and_updates(tmp_path):
    chats = ChatStore(Store(f"sqlite:///{tmp_path / 'a.db'}"))
    assert chats.settings("telegram", "1") == ChatSettings()
    assert ChatSettings().auto_analyze_in(ChatKind.PRIVATE) and not ChatSettings().auto_analyze_in(
        ChatKind.GROUP
    )
    chats.update_settings("telegram", "1", auto_analyze=True, title_language=TitleLanguage.ENGLISH)
    chats.update_settings("telegram", "1", top_n=7)
    again = ChatStore(Store(f"sqlite:///{tmp_path / 'a.db'}")).settings("telegram", "1")
    assert (again.auto_analyze, again.top_n, again.title_language) == (True, 7, TitleLanguage.ENGLISH)
    assert chats.settings("discord", "1") == ChatSettings()  # per platform
    with pytest.raises(TypeError):
        chats.update_settings("telegram", "1", colour="red")


def test_corrections_are_stored(tmp_path):
    chats = ChatStore(Store(f"sqlite:///{tmp_path / 'a.db'}"))
    chats.add_correction(Correction("j1", 2, "Rem", "discord", "c", "u", predicted="Ram"))
    assert [(c.head, c.name, c.predicted, c.status) for c in chats.corrections(job_id="j1")] == [
        (2, "Rem", "Ram", "pending")
    ]


def test_token_bucket_refuses_beyond_the_burst_and_refills(redis_kv):
    buckets = TokenBuckets(redis_kv.client)
    rule = BucketRule(per_minute=600.0, burst=3)  # 10 tokens a second
    assert [buckets.take("u", rule).allowed for _ in range(4)] == [True, True, True, False]
    refused = buckets.take("u", rule)
    assert not refused.allowed and 0 < refused.retry_after_s <= 0.1
    slow = BucketRule(per_minute=1.0, burst=1)
    assert buckets.take("v", slow).allowed
    assert buckets.take("v", slow).retry_after_text.endswith("s")
    import time

    time.sleep(0.15)
    assert buckets.take("u", rule).allowed  # refilled


def test_one_active_job_per_key(redis_kv):
    active = ActiveJobs(redis_kv.client, ttl_s=60)
    assert active.acquire("t:c:u", "a") and not active.acquire("t:c:u", "b")
    active.release("t:c:u", "b")  # not the owner: nothing happens
    assert active.holder("t:c:u") == "a"
    active.release("t:c:u", "a")
    assert active.acquire("t:c:u", "b")


def test_every_command_is_declared_once_with_usage():
    import bot.commands  # noqa: F401

    names = [c.name for c in COMMANDS.all()]
    assert len(names) == len(set(names))
    required = {
        "identify",
        "recommend",
        "anime",
        "help",
        "stats",
        "settings",
        "addcharacter",
        "removecharacter",
    }
    assert required | {"characters", "retrain", "jobs", "search", "fav"} <= set(names)
    admin = {c.name for c in COMMANDS.all() if c.permission is Permission.BOT_ADMIN}
    assert admin == {"addcharacter", "removecharacter", "characters", "retrain", "reindex", "jobs", "review"}
    assert all(c.usage.startswith(f"/{c.name}") for c in COMMANDS.all())
