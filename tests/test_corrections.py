"""Users' corrections: the review rules on a SQLite store, then "Wrong?" -> /review -> a reference, end to end."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import replace

import pytest
from PIL import Image
from sqlalchemy import inspect, text

from core.characters.corrections import (
    AUTO_REVIEWER,
    EXPIRED_REASON,
    Corrections,
    head_crop,
    reference_sha256,
)
from core.characters.teaching import PreparedReference, TeachOutcome
from core.chat.store import ChatStore, Correction, CorrectionStatus
from core.storage.store import Store

SHA_A = "a" * 64
SHA_B = "b" * 64
BOX = (10.0, 20.0, 50.0, 70.0)


@pytest.fixture
def chats() -> ChatStore:
    store = Store("sqlite://")
    store.create_all()
    return ChatStore(store)


def given(
    name: str, user: str, *, sha: str = SHA_A, head: int = 1, platform: str = "test", series: str = ""
) -> Correction:
    return Correction(
        job_id="j" + sha[:6],
        head=head,
        name=name,
        series=series,
        platform=platform,
        chat_id="c1",
        user_id=user,
        predicted="Ram",
        image_sha256=sha,
        box=BOX,
    )


def statuses(chats: ChatStore) -> list[str]:
    return [c.status for c in chats.corrections()]


# --- the rules ---------------------------------------------------------------------------------------------


def test_a_correction_waits_for_an_admin_by_default(chats):
    desk = Corrections(chats, auto_accept=0)
    for user in ("u1", "u2", "u3"):
        recorded = desk.record(given("Rem", user))
        assert recorded.accepted == ()
    assert recorded.agreeing == 3
    assert statuses(chats) == ["pending"] * 3
    stored = chats.corrections()[0]
    assert stored.box == BOX and stored.id is not None and stored.reviewer is None


KNOWN = lambda: [("Rem", "Re:Zero"), ("Ram", "Re:Zero")]  # noqa: E731  (the gallery's characters)


def test_auto_accept_needs_n_people_of_one_platform_case_insensitively(chats):
    desk = Corrections(chats, auto_accept=3, characters=KNOWN)
    assert desk.record(given("Rem", "u1")).accepted == ()
    again = desk.record(given("rem", "u1"))  # the same user twice counts once
    assert again.agreeing == 1 and again.accepted == ()
    assert desk.record(given("Ram", "u2")).agreeing == 1  # another name does not agree
    assert desk.record(given("Rem", "u2", head=2)).agreeing == 1  # another head does not agree
    assert desk.record(given("Rem", "u2", sha=SHA_B)).agreeing == 1  # another picture does not agree
    # a Discord and a Telegram account may be one person: users of other platforms never add up
    assert desk.record(given("Rem", "u1", platform="discord")).accepted == ()
    across = desk.record(given("Rem", "u9", platform="telegram"))
    assert across.agreeing == 3 and across.accepted == () and across.waits_because == "not_enough_people"
    assert desk.record(given("Rem", "u2")).accepted == ()  # two people on "test"
    third = desk.record(given("REM", "u3"))
    assert third.agreeing == 3
    assert len(third.accepted) == 6  # every pending "rem" of that head, whichever platform gave it
    assert third.correction.status == CorrectionStatus.APPROVED
    approved = chats.corrections(status=CorrectionStatus.APPROVED)
    assert {c.name.casefold() for c in approved} == {"rem"}
    assert {(c.head, c.image_sha256) for c in approved} == {(1, SHA_A)}
    assert all(c.reviewer == AUTO_REVIEWER and c.reviewed_at is not None for c in approved)
    assert len(chats.corrections(status=CorrectionStatus.PENDING)) == 3  # Ram, head 2, other picture
    later = desk.record(given("Rem", "u4"))  # agreeing after acceptance: accepted at once
    assert later.correction.status == CorrectionStatus.APPROVED


def test_a_new_name_always_waits_for_an_admin(chats):
    for characters in (KNOWN, None):
        desk = Corrections(chats, auto_accept=2, characters=characters)
        for user in ("u1", "u2", "u3"):
            recorded = desk.record(given("Subaru", user, sha=SHA_B))
            assert recorded.accepted == () and recorded.correction.status == CorrectionStatus.PENDING
        assert recorded.waits_because == "new_character"
    desk = Corrections(chats, auto_accept=2, characters=KNOWN)
    for user in ("u1", "u2"):  # a known name in another series is another character: new
        recorded = desk.record(given("Rem", user, head=3, series="Another Series"))
    assert recorded.accepted == () and recorded.waits_because == "new_character"
    for user in ("u1", "u2"):  # the known one, its series left out
        recorded = desk.record(given("ram", user, head=4))
    assert len(recorded.accepted) == 2


def test_auto_accept_is_limited_per_person_per_day(chats):
    desk = Corrections(chats, auto_accept=2, per_user_per_day=2, characters=KNOWN)
    for head in (1, 2):
        desk.record(given("Rem", "u1", head=head))
        assert len(desk.record(given("Rem", "u2", head=head)).accepted) == 2
    assert desk.auto_accepted_today("test", "u1") == 2
    desk.record(given("Rem", "u1", head=3))
    over = desk.record(given("Rem", "u2", head=3))  # both past their limit: they no longer count
    assert over.accepted == () and over.waits_because == "not_enough_people"
    desk.record(given("Rem", "u3", head=3))  # u3 alone counts: still one person
    assert chats.corrections(head=3, status=CorrectionStatus.PENDING)
    assert len(desk.record(given("Rem", "u4", head=3)).accepted) == 4


def test_one_person_never_auto_accepts():
    from pydantic import ValidationError

    from core.settings import Settings

    with pytest.raises(ValueError, match="at least 2"):
        Corrections(ChatStore(Store("sqlite://")), auto_accept=1)
    with pytest.raises(ValidationError, match="at least 2"):
        Settings(_env_file=None, corrections_auto_accept=1)


def test_rejected_corrections_do_not_count(chats):
    desk = Corrections(chats, auto_accept=2, characters=KNOWN)
    first = desk.record(given("Rem", "u1")).correction
    assert first.id is not None
    assert desk.reject(first.id, "test:admin") is not None
    recorded = desk.record(given("Rem", "u2"))
    assert recorded.agreeing == 1 and recorded.accepted == ()
    assert desk.record(given("Rem", "u3")).accepted  # two standing people now


def test_review_moves_a_pending_correction_once(chats):
    desk = Corrections(chats)
    ids = [desk.record(given(name, f"u{i}")).correction.id for i, name in enumerate(("Rem", "Ram", "Emilia"))]
    first = desk.next_pending()
    assert first is not None and first.correction.id == ids[0] and first.waiting == 3 and first.agreeing == 1
    skipped = desk.next_pending(after_id=ids[0])
    assert skipped is not None and skipped.correction.id == ids[1]
    approved = desk.approve(ids[0], "test:admin")
    assert approved is not None and approved.status == "approved" and approved.reviewer == "test:admin"
    assert desk.approve(ids[0], "test:other") is None  # already reviewed: not changed again
    assert desk.reject(ids[0], "test:other") is None
    rejected = desk.reject(ids[1], "test:admin")
    assert rejected is not None and rejected.status == "rejected"
    assert desk.approve(999, "test:admin") is None
    remaining = desk.next_pending()
    assert remaining is not None and remaining.correction.id == ids[2] and remaining.waiting == 1
    assert desk.reject(ids[2], "test:admin") is not None
    assert desk.next_pending() is None


class FakeTeacher:
    def __init__(self) -> None:
        self.references: dict[str, tuple[str, str]] = {}
        self.calls: list[tuple[str, str, int]] = []

    def add(self, name: str, series: str, references: Sequence[PreparedReference]) -> TeachOutcome:
        self.calls.append((name, series, len(references)))
        added = 0
        for ref in references:
            assert ref.crop.size == (40, 50)
            added += ref.sha256 not in self.references
            self.references[ref.sha256] = (name, series)
        return TeachOutcome(name.title(), series, added, len(self.references), (), len(self.calls))


def test_apply_teaches_approved_heads_and_marks_expired_pictures(chats, caplog):
    desk = Corrections(chats)
    rem = [desk.record(given("Rem", u, series="Re:Zero")).correction for u in ("u1", "u2")]
    hoshino = desk.record(given("hoshino", "u3", sha=SHA_B)).correction
    gone = desk.record(replace(given("Emilia", "u4"), image_sha256="c" * 64)).correction
    waiting = desk.record(given("Ram", "u5")).correction
    for c in (*rem, hoshino, gone):
        assert c.id is not None and desk.approve(c.id, "test:admin") is not None
    picture = Image.new("RGB", (100, 100), "white")
    teacher = FakeTeacher()
    report = desk.apply(teacher, lambda sha: picture if sha in (SHA_A, SHA_B) else None)
    assert sorted(teacher.calls) == [("Rem", "Re:Zero", 1), ("hoshino", "", 1)]  # same head: one reference
    assert set(teacher.references) == {reference_sha256(SHA_A, BOX), reference_sha256(SHA_B, BOX)}
    assert report.message.startswith("Added 3 corrections as references (Rem, Hoshino).")
    assert f"#{gone.id} Emilia" in report.message and "expired" in report.message
    after = {c.id: c for c in chats.corrections()}
    assert [after[c.id].status for c in (*rem, hoshino)] == ["applied"] * 3
    assert after[gone.id].status == "expired" and after[gone.id].reason == EXPIRED_REASON
    assert after[waiting.id].status == "pending"
    assert any("not applied" in r.getMessage() for r in caplog.records)
    again = desk.apply(teacher, lambda sha: picture)  # redelivered: nothing left to do
    assert again.applied == () and again.expired == () and len(teacher.calls) == 2
    assert "No approved corrections" in again.message


def test_reference_identity_and_crop():
    assert reference_sha256(SHA_A, BOX) == reference_sha256(SHA_A, (10.04, 20.0, 50.0, 70.0))
    assert reference_sha256(SHA_A, BOX) != reference_sha256(SHA_A, (11.0, 20.0, 50.0, 70.0))
    assert reference_sha256(SHA_A, BOX) != reference_sha256(SHA_B, BOX)
    assert head_crop(Image.new("L", (100, 100)), (10.6, 20.2, 50.4, 70.7)).size == (40, 51)


def test_an_older_correction_table_gets_the_new_columns(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE anibot_correction (id INTEGER PRIMARY KEY, job_id VARCHAR(64), "
                "image_sha256 VARCHAR(64), head INTEGER, predicted VARCHAR(200), name VARCHAR(200), "
                "platform VARCHAR(32), chat_id VARCHAR(64), user_id VARCHAR(64), status VARCHAR(16), "
                "created_at DATETIME)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO anibot_correction (job_id, image_sha256, head, predicted, name, platform, chat_id,"
                " user_id, status) VALUES ('j', :sha, 1, '', 'Rem', 'test', 'c', 'u', 'pending')"
            ),
            {"sha": SHA_A},
        )
    store.create_all()
    chats = ChatStore(store)
    columns = {c["name"] for c in inspect(store.engine).get_columns("anibot_correction")}
    assert {"series", "box", "reviewer", "reviewed_at", "reason"} <= columns
    old = chats.corrections()[0]
    assert (old.name, old.series, old.box, old.status) == ("Rem", "", None, "pending")
    assert Corrections(chats).record(given("rem", "u2")).agreeing == 2


# --- through the command layer and a real worker ------------------------------------------------------------


def _scene_bytes(seed: int) -> bytes:
    from core.datasets.synth import render_scene

    buffer = io.BytesIO()
    render_scene(seed).image.save(buffer, format="PNG")
    return buffer.getvalue()


def _invocation(
    data: bytes | None = None, *, user: str | None = None, chat: str | None = None, args: str = ""
):  # type: ignore[no-untyped-def]
    from bot.invocation import IncomingImage, Invocation
    from tests.conftest import fresh_id

    images = ()
    if data is not None:

        async def fetch() -> bytes:
            return data

        images = (IncomingImage(fetch, size=len(data), filename="scene.png"),)
    return Invocation(
        platform="test", chat_id=chat or fresh_id(), user_id=user or fresh_id(), args=args, images=images
    )


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


CHAT = "corrections-chat"  # a result's buttons work in the chat it was posted in


def _analyse(layer, data: bytes, user: str | None = None):  # type: ignore[no-untyped-def]
    from bot.replies import ReplyKind

    reply = _run(layer.images(_invocation(data, user=user, chat=CHAT), explicit=True))[0]
    assert reply.kind is ReplyKind.RESULT, reply
    return reply


def _correct(layer, result_reply, name: str, user: str | None = None):  # type: ignore[no-untyped-def]
    inv = _invocation(user=user, chat=CHAT)
    wrong = next(b for b in result_reply.buttons if b.action == "wrong")
    assert _run(layer.button(inv, wrong.callback_data))[0].expects_answer
    return _run(layer.text(replace(inv, args=f"1 {name}")))[0]


@pytest.mark.queue
def test_a_reviewed_correction_names_the_head_next_time(bot_stack):
    from bot.replies import ReplyKind

    layer = bot_stack.layer()
    data = _scene_bytes(7_700_001)
    first = _analyse(layer, data)
    assert first.data["result"]["heads"][0]["name"] != "Zora Testvale"
    thanks = _correct(layer, first, "Zora Testvale | Correction Tests")
    assert "Zora Testvale (Correction Tests)" in thanks.text and "review" in thanks.text
    mine = thanks.data["correction_id"]
    stored = layer.chats.correction(mine)
    assert stored is not None and stored.box is not None and stored.status == "pending"
    assert layer.client.kv.client.ttl(f"anibot:blob:{stored.image_sha256}") > layer.settings.blob_ttl_s

    bad = _correct(layer, first, "<script>")
    assert bad.kind is ReplyKind.REFUSAL and bad.code == "bad_name"

    admin = _invocation(user="admin")
    card = _run(layer.command(admin, "review"))[0]
    for _ in range(50):  # other tests of this session may have left older corrections
        if card.data and card.data["correction_id"] == mine:
            break
        skip = next(b for b in card.buttons if b.action == "review.skip")
        card = _run(layer.button(admin, skip.callback_data))[0]
    assert card.data["correction_id"] == mine, card
    assert card.data["name"] == "Zora Testvale" and card.data["agreeing"] == 1
    assert card.image is not None and card.image.data.startswith(b"\x89PNG")
    # the head was cut by a worker (the bot process decodes no picture)
    [crop] = layer.client.jobs.recent(["crop"], limit=1)
    assert crop.status.value == "done" and crop.params["image"] == stored.image_sha256
    assert [b.callback_data for b in card.buttons] == [
        f"review.approve:{mine}",
        f"review.reject:{mine}",
        f"review.skip:{mine}",
    ]

    outcome = _run(layer.button(admin, f"review.approve:{mine}"))[0]
    assert outcome.kind is ReplyKind.RESULT, outcome
    assert "as references" in outcome.text and "Zora Testvale" in outcome.text, outcome.text
    applied = layer.chats.correction(mine)
    assert applied is not None and applied.status == "applied" and applied.reviewer == "test:admin"
    again = _run(layer.button(admin, f"review.approve:{mine}"))[0]
    assert again.kind is ReplyKind.REFUSAL and "already applied" in again.text

    second = _analyse(layer, data)
    head = second.data["result"]["heads"][0]
    assert head["name"] == "Zora Testvale", head
    assert head["candidates"][0]["series"] == "Correction Tests"


@pytest.mark.queue
def test_review_is_for_bot_admins_only(bot_stack, caplog):
    from bot.replies import ReplyKind

    layer = bot_stack.layer()
    data = _scene_bytes(7_700_002)
    thanks = _correct(layer, _analyse(layer, data), "Nonadmin Testcase")
    mine = thanks.data["correction_id"]
    someone = _invocation()
    reply = _run(layer.command(someone, "review"))[0]
    assert reply.kind is ReplyKind.REFUSAL and "admins only" in reply.text
    for action in ("review.approve", "review.reject", "review.skip"):
        pressed = _run(layer.button(someone, f"{action}:{mine}"))[0]
        assert pressed.kind is ReplyKind.REFUSAL and pressed.code == "forbidden", action
    assert layer.chats.correction(mine).status == "pending"
    assert any("refused a review button" in r.getMessage() for r in caplog.records)
    admin = _invocation(user="admin")
    rejected = _run(layer.button(admin, f"review.reject:{mine}"))
    assert "Rejected correction" in rejected[0].text
    assert layer.chats.correction(mine).status == "rejected"


@pytest.mark.queue
def test_agreeing_users_accept_a_correction_without_an_admin(bot_stack):
    from tests.conftest import wait_for

    layer = bot_stack.layer(corrections_auto_accept=2)
    data = _scene_bytes(7_700_003)
    result = _analyse(layer, data)
    new = [_correct(layer, result, "Agreed Newname", user=f"new-{i}") for i in range(3)]
    assert all("review" in r.text and r.data["status"] == "pending" for r in new)  # a new name: an admin's
    shown = result.data["result"]["heads"][0]["name"]
    known = next(c for c in layer.store.list_characters() if c.n_references and c.name != shown)
    first = _correct(layer, result, known.name)
    assert "review" in first.text and first.data["status"] == "pending"
    second = _correct(layer, result, known.name.upper())
    assert "accepted" in second.text and second.data["status"] == "approved"
    ids = (first.data["correction_id"], second.data["correction_id"])
    assert wait_for(lambda: all(layer.chats.correction(i).status == "applied" for i in ids), 60, 0.5)
    assert all(layer.chats.correction(r.data["correction_id"]).status == "pending" for r in new)
    again = _analyse(layer, data)
    assert again.data["result"]["heads"][0]["name"] == known.name
