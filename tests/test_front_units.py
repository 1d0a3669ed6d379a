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
        ("Ｒｅｍ", ("Rem", "")),  # full-width: the same character as "Rem" (NFKC, not NFC)
        ("Ｒｅｍ （Ｒｅ：Ｚｅｒｏ）", ("Rem", "Re:Zero")),
        ("Ｒｅｍ ｜ Ｒｅ：Ｚｅｒｏ", ("Rem", "Re:Zero")),
    ],
)
def test_names_are_normalised(text, expected):
    assert split_name_and_series(text) == expected


@pytest.mark.parametrize(
    "bad", ["", "   ", "../etc/passwd", "a/b", "ａ／ｂ", ".hidden", "x" * 101, "<script>", "snake_case"]
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


def many_heads_result(n: int):  # type: ignore[no-untyped-def]
    from core.vision.results import AnalysisResult, Box, Candidate, Head

    heads = tuple(
        Head(
            box=Box(0, 0, 10 + (i * 37) % n, 10 + (i * 37) % n),  # sizes shuffled against the order
            detection_score=0.9,
            candidates=(Candidate(f"Char {i}", "Series", 0.8, 0.7),),
            name=f"Char {i}",
            confidence=0.8,
        )
        for i in range(n)
    )
    return AnalysisResult(
        image_sha256="0" * 64,
        width=400,
        height=400,
        heads=heads,
        tags=(),
        rating=None,
        caption=None,
        fingerprint="",
    )


def test_a_picture_with_300_heads_lists_the_largest_15_and_counts_the_rest():
    from bot.render import analysis_reply, candidates_reply, listed_heads
    from bot.telegram.render import caption_and_rest

    result = many_heads_result(300)
    listed, left_out = listed_heads(result, 15)
    assert left_out == 285 and len(listed) == 15
    sizes = sorted((h.box.width for h in result.heads), reverse=True)
    assert sorted(h.box.width for _, h in listed) == sorted(sizes[:15])  # the largest
    numbers = [i for i, _ in listed]
    assert numbers == sorted(numbers)  # in picture order, numbered as drawn and as "Wrong?" answers name them
    assert all(result.heads[i - 1] is h for i, h in listed)

    reply = analysis_reply(result, b"jpeg", job_id="f" * 32, chat=ChatSettings(), channel_nsfw=False)
    heads = [f for f in reply.fields if f.name.startswith("#")]
    assert len(heads) == 15
    assert any("285 smaller heads not listed" in f.value for f in reply.fields)
    assert len(caption_and_rest(reply)) <= 4
    more = candidates_reply(result, "f" * 32)
    assert sum(f.name.startswith("#") for f in more.fields) == 15

    few = analysis_reply(
        many_heads_result(3), b"jpeg", job_id="f" * 32, chat=ChatSettings(), channel_nsfw=False
    )
    assert [f.name.split()[0] for f in few.fields if f.name.startswith("#")] == ["#1", "#2", "#3"]
    assert not any("not listed" in f.value for f in few.fields)


def test_follow_up_messages_are_capped():
    from bot.replies import CUT_NOTE, cap_messages
    from bot.telegram.render import message_chunks

    assert cap_messages(["a", "b"], 4) == ["a", "b"]
    assert cap_messages([str(i) for i in range(10)], 4) == ["0", "1", "2", CUT_NOTE]
    chunks = message_chunks(Reply(text="word " * 20_000))
    assert len(chunks) == 4 and chunks[-1] == CUT_NOTE and all(len(c) <= 4096 for c in chunks)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7", 7),
        (" 12 ", 12),
        ("0", 0),
        ("²", None),
        ("٣", None),
        ("3\n", 3),
        ("-1", None),
        ("1e3", None),
        ("", None),
        ("1234567890", None),
    ],
)
def test_numbers_are_ascii_digits_only(text, expected):
    from bot.numbers import ascii_int

    assert ascii_int(text) == expected


def test_settings_topn_refuses_unicode_digits():
    from bot.commands.general import SETTINGS

    read = SETTINGS["topn"][1]
    assert read("3") == 3
    for bad in ("²", "٣", "11", "0"):
        with pytest.raises(ValueError, match="from 1 to 10"):
            read(bad)


def test_take_up_to_grants_what_every_bucket_holds_and_charges_each_item(redis_kv):
    buckets = TokenBuckets(redis_kv.client)
    user, chat = f"user:{uuid.uuid4().hex}", f"chat:{uuid.uuid4().hex}"
    pair = [(user, BucketRule(per_minute=6, burst=3)), (chat, BucketRule(per_minute=60, burst=10))]
    grant = buckets.take_up_to(pair, 10)  # ten pictures cost ten tokens: the user's bucket holds three
    assert grant.granted == 3 and grant.limiting == 0 and grant.retry_after_s > 0
    again = buckets.take_up_to(pair, 1)
    assert again.granted == 0 and 5 < again.retry_after_s <= 10.5  # one token flows back every 10 s
    # the chat paid for the three granted only
    assert buckets.take_up_to([(chat, BucketRule(per_minute=60, burst=10))], 10).granted == 7
    # a cost the bucket can never hold is refused, not charged at the bucket's size
    assert not buckets.take(f"user:{uuid.uuid4().hex}", BucketRule(per_minute=6, burst=3), cost=10).allowed


# --- "not sure": heads below the chat's sure threshold ----------------------------------------------------------


def unsure_result(*heads):  # type: ignore[no-untyped-def]
    from tests.cached_answers import picture, result_of

    return result_of(picture(1), *heads)


def test_a_head_is_sure_at_or_above_the_threshold_and_unknown_never_is():
    from core.vision.results import DEFAULT_SURE_CONFIDENCE, UNKNOWN, Box, Head

    named = Head(box=Box(0, 0, 1, 1), detection_score=1.0, name="Rem", confidence=0.6)
    assert named.is_sure(0.6) and not named.is_sure(0.61) and named.is_sure(0.0)
    assert named.is_sure() and DEFAULT_SURE_CONFIDENCE == 0.5
    assert not Head(box=Box(0, 0, 1, 1), detection_score=1.0, name="Rem", confidence=0.49).is_sure()
    unknown = Head(box=Box(0, 0, 1, 1), detection_score=1.0, name=UNKNOWN, confidence=1.0)
    assert not unknown.is_sure(0.0)


def test_a_low_confidence_answer_names_no_one_and_puts_its_guesses_behind_a_button():
    from bot.render import analysis_reply
    from tests.cached_answers import GUESSED_NAMES

    result = unsure_result()
    reply = analysis_reply(result, b"jpeg", job_id="f" * 32, chat=ChatSettings(), channel_nsfw=False)
    assert reply.title == "3 heads found, 1 named, 2 not sure"
    heads = [f for f in reply.fields if f.name.startswith("#")]
    assert [f.name for f in heads] == ["#1 Hatsune Miku (91%, both agree)", "#2 not sure", "#3 not sure"]
    assert heads[0].value == "1. Hatsune Miku (Vocaloid): 91%, both agree\n2. Kagamine Rin (Vocaloid): 4%"
    assert all("Show guesses" in f.value for f in heads[1:])
    assert not any(name in reply.plain_text() for name in GUESSED_NAMES)
    assert [(b.label, b.action) for b in reply.buttons] == [
        ("Show guesses", "guesses"),
        ("More candidates", "more"),
        ("Wrong? Tell me who", "wrong"),
    ]
    assert reply.data is not None and reply.data["sure_threshold"] == 0.5
    assert Button.parse(reply.buttons[0].callback_data) == ("guesses", "f" * 32)


@pytest.mark.parametrize(
    ("threshold", "named", "titles"),
    [
        (
            0.0,
            2,
            ["#1 Hatsune Miku (91%, both agree)", "#2 Hoshino Ai (38%, from the gallery)", "#3 not sure"],
        ),
        (
            0.38,
            2,
            ["#1 Hatsune Miku (91%, both agree)", "#2 Hoshino Ai (38%, from the gallery)", "#3 not sure"],
        ),
        (0.95, 0, ["#1 not sure", "#2 not sure", "#3 not sure"]),
    ],
)
def test_the_chat_threshold_decides_what_is_named(threshold, named, titles):
    from bot.render import analysis_reply

    chat = ChatSettings(sure_threshold=threshold)
    reply = analysis_reply(unsure_result(), b"jpeg", job_id="f" * 32, chat=chat, channel_nsfw=False)
    assert [f.name for f in reply.fields if f.name.startswith("#")] == titles
    assert reply.title.startswith(f"3 heads found, {named} named, {3 - named} not sure")
    assert reply.buttons[0].label == "Show guesses"  # the unknown head always has its guesses there


def test_no_guesses_button_when_every_head_is_sure_or_has_no_guesses():
    from dataclasses import replace

    from bot.render import analysis_reply
    from tests.cached_answers import SURE, UNSEEN

    sure = analysis_reply(unsure_result(SURE), b"j", job_id="f" * 32, chat=ChatSettings(), channel_nsfw=False)
    assert sure.title == "1 head found, 1 named" and [b.action for b in sure.buttons] == ["more", "wrong"]
    failed = replace(UNSEEN, candidates=())  # identification failed: nothing to guess from
    blind = analysis_reply(
        unsure_result(failed), b"j", job_id="f" * 32, chat=ChatSettings(), channel_nsfw=False
    )
    assert [b.action for b in blind.buttons] == ["more", "wrong"]
    assert blind.fields[0].value == "no candidates (identification unavailable)"


def test_show_guesses_lists_the_unsure_heads_best_guesses_with_confidences():
    from bot.render import candidates_reply, guesses_reply

    result = unsure_result()
    shown = guesses_reply(result, "f" * 32, ChatSettings(top_n=2))
    assert shown.title == "Best guesses (not sure)"
    assert [(f.name, f.value) for f in shown.fields] == [
        (
            "#2 not sure",
            "1. Hoshino Ai (Oshi no Ko): 38%\n2. Hoshino Ruby (Oshi no Ko): 21%, from the tagger",
        ),
        ("#3 not sure", "not in my gallery; closest:\n1. Megurine Luka (Vocaloid): 12%"),
    ]
    lenient = guesses_reply(result, "f" * 32, ChatSettings(sure_threshold=0.3))
    assert [f.name for f in lenient.fields] == ["#3 not sure"]
    none = guesses_reply(unsure_result(result.heads[0]), "f" * 32, ChatSettings())
    assert none.fields == () and "/settings sure" in none.text
    # "More candidates" lists every head's candidates, but names no head below the threshold either
    more = candidates_reply(result, "f" * 32, sure_threshold=0.5)
    assert [f.name for f in more.fields] == [
        "#1 Hatsune Miku (91%, both agree)",
        "#2 not sure",
        "#3 not sure",
    ]
    assert "3. Arima Kana (Oshi no Ko): 8%" in more.fields[1].value


def test_the_sure_threshold_is_stored_per_chat_and_added_to_an_existing_table(tmp_path):
    import sqlite3

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as old:  # the table as it was before the column
        old.execute(
            "CREATE TABLE anibot_chat_settings (id INTEGER PRIMARY KEY, platform VARCHAR(32), chat_id VARCHAR(64),"
            " auto_analyze INTEGER, top_n INTEGER, nsfw_spoilers INTEGER, title_language VARCHAR(16),"
            " updated_at DATETIME, UNIQUE (platform, chat_id))"
        )
        old.execute(
            "INSERT INTO anibot_chat_settings (platform, chat_id, top_n, nsfw_spoilers, title_language, "
            "updated_at) VALUES ('telegram', '9', 4, 1, 'romaji', '2026-01-01 00:00:00')"
        )
    chats = ChatStore(Store(f"sqlite:///{db}"))
    assert chats.settings("telegram", "9") == ChatSettings(top_n=4)  # NULL: the default
    assert ChatSettings().sure_threshold == 0.5
    chats.update_settings("telegram", "9", sure_threshold=0.75)
    again = ChatStore(Store(f"sqlite:///{db}"))
    assert (
        again.settings("telegram", "9").sure_threshold == 0.75 and again.settings("telegram", "9").top_n == 4
    )
    assert again.settings("discord", "9").sure_threshold == 0.5
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="from 0 to 1"):
            chats.update_settings("telegram", "9", sure_threshold=bad)
    assert again.settings("telegram", "9").sure_threshold == 0.75


def test_settings_sure_reads_a_fraction_or_a_percentage_in_ascii_digits():
    from bot.commands.general import SETTINGS

    field, read, help_text = SETTINGS["sure"]
    assert field == "sure_threshold" and "not sure" in help_text
    for text, value in (("0.6", 0.6), (".6", 0.6), ("60%", 0.6), ("62.5%", 0.625), ("1", 1.0), ("0", 0.0)):
        assert read(text) == pytest.approx(value), text
    for bad in ("60", "1.5", "101%", "", ".", "٦٠%", "0,6", "-0.1", "0.6%x", "half"):
        with pytest.raises(ValueError, match="from 0 to 1"):
            read(bad)


def test_settings_show_the_sure_threshold(tmp_path):
    from bot.commands.general import _settings_reply
    from bot.invocation import Invocation

    inv = Invocation(platform="test", chat_id="1", user_id="1")
    shown = {f.name for f in _settings_reply(ChatSettings(), inv).fields}
    assert "sure: 50% (default)" in shown
    assert "sure: 70%" in {f.name for f in _settings_reply(ChatSettings(sure_threshold=0.7), inv).fields}
