"""The gallery grows from confident answers: tagger-named heads alone in their picture become proposed references
(core.characters.proposals), listed beside users' corrections, capped, and never bringing back a removed character."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from PIL import Image
from typer.testing import CliRunner

from core.characters.corrections import REMOVED_REASON, Corrections
from core.characters.proposals import PROPOSER, ProposalRules, Proposals, proposal_for
from core.characters.teaching import PreparedReference, TeachOutcome
from core.chat.store import ChatStore, Correction, CorrectionKind
from core.storage.store import Store
from core.vision.results import UNKNOWN, AnalysisResult, Box, Head

BOX = Box(10, 20, 50, 70)


def result(*heads: Head, sha: str = "a" * 64) -> AnalysisResult:
    return AnalysisResult(sha, 100, 100, tuple(heads), (), None, None, "fp")


def head(
    name: str = "Rem", series: str = "Re:Zero", confidence: float = 0.95, source: str = "tagger"
) -> Head:
    return Head(
        BOX, 0.9, (), name, confidence, series if name != UNKNOWN else "", source if name != UNKNOWN else ""
    )


@pytest.fixture
def store() -> Store:
    s = Store("sqlite://")
    s.create_all()
    return s


def proposals(store: Store, **rules: object) -> Proposals:
    return Proposals(ChatStore(store), store.removed_characters, ProposalRules(**rules))  # type: ignore[arg-type]


def test_only_a_confident_tagger_head_alone_in_its_picture_is_proposed() -> None:
    rules = ProposalRules(min_confidence=0.9)
    made = proposal_for(result(head()), "job1", rules, chat_id="c1")
    assert made is not None
    assert (made.name, made.series, made.kind, made.user_id) == ("Rem", "Re:Zero", "proposal", PROPOSER)
    assert made.box == (10, 20, 50, 70) and made.head == 1 and "95%" in (made.reason or "")
    assert proposal_for(result(head(confidence=0.89)), "j", rules) is None  # not confident enough
    assert proposal_for(result(head(source="gallery")), "j", rules) is None  # the gallery knows it already
    assert proposal_for(result(head(source="both")), "j", rules) is None
    assert proposal_for(result(head(UNKNOWN)), "j", rules) is None
    assert proposal_for(result(head(), head("Ram")), "j", rules) is None  # not alone in its picture
    assert proposal_for(result(head()), "j", ProposalRules(per_character=0)) is None


def test_proposals_are_listed_beside_corrections_and_approved_like_them(store: Store) -> None:
    desk = proposals(store)
    proposed = desk.consider(result(head()), "job1", "c1")
    assert proposed is not None and proposed.status == "pending" and proposed.is_proposal
    assert desk.consider(result(head()), "job2") is None  # the same picture again: proposed once
    chats = ChatStore(store)
    user = chats.add_correction(
        Correction("job3", 1, "Emilia", "test", "c1", "u1", image_sha256="b" * 64, box=(1, 2, 3, 4))
    )
    review = Corrections(chats, removed=store.removed_characters)
    first = review.next_pending()
    assert first is not None and first.correction.kind == CorrectionKind.PROPOSAL and first.waiting == 2
    second = review.next_pending(after_id=first.correction.id or 0)
    assert second is not None and second.correction.id == user and second.correction.kind == "user"
    assert review.approve(proposed.id or 0, "test:admin") is not None
    assert [c.kind for c in chats.corrections(kind="proposal")] == ["proposal"]
    assert [c.id for c in chats.corrections(kind="user")] == [user]


def test_accepting_without_review_is_capped_per_character(store: Store) -> None:
    desk = proposals(store, accept=True, per_character=2)
    made = [desk.consider(result(head(), sha=f"{i:064x}"), f"job{i}") for i in range(4)]
    assert [m.status if m else None for m in made] == ["approved", "approved", None, None]
    assert all(m.reviewer == "auto" for m in made[:2] if m)
    # the same character written another way counts towards the same cap
    assert desk.consider(result(head("rem", "re:zero"), sha="f" * 64), "job9") is None
    # another character has its own share
    other = desk.consider(result(head("Emilia"), sha="e" * 64), "job10")
    assert other is not None and other.status == "approved"
    # a rejected proposal no longer counts
    ChatStore(store).set_correction_status([made[0].id or 0], "rejected")
    assert desk.consider(result(head(), sha="d" * 64), "job11") is not None


def test_a_removed_character_is_never_proposed_nor_applied(store: Store) -> None:
    desk = proposals(store, accept=True)
    early = desk.consider(result(head(), sha="1" * 64), "job1")  # approved before the removal
    assert early is not None and early.status == "approved"
    store.add_character("Rem", "Re:Zero")
    assert store.delete_character("Rem", "Re:Zero")
    assert store.removed_characters() == [("Rem", "Re:Zero")]
    assert desk.consider(result(head(), sha="2" * 64), "job2") is None
    assert desk.consider(result(head("REM", ""), sha="3" * 64), "job3") is None  # no series: the same one

    class Teacher:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def add(self, name: str, series: str, references: Sequence[PreparedReference]) -> TeachOutcome:
            self.calls.append(name)
            return TeachOutcome(name, series, len(references), len(references), (), 1)

    teacher = Teacher()
    report = Corrections(ChatStore(store), removed=store.removed_characters).apply(
        teacher, lambda sha: Image.new("RGB", (100, 100))
    )
    assert teacher.calls == [] and report.applied == ()
    withdrawn = ChatStore(store).correction(early.id or 0)
    assert withdrawn is not None and withdrawn.status == "rejected" and withdrawn.reason == REMOVED_REASON
    # an admin teaching it again lifts the removal
    assert store.forget_removal("Rem", "Re:Zero") and store.removed_characters() == []
    assert desk.consider(result(head(), sha="4" * 64), "job4") is not None


def test_the_cli_lists_and_decides_proposals(store: Store, tmp_path, monkeypatch) -> None:
    from cli.main import app
    from core.settings import get_settings

    url = f"sqlite:///{tmp_path / 'anibot.db'}"
    monkeypatch.setenv("ANIBOT_DATABASE_URL", url)
    monkeypatch.setenv("ANIBOT_REDIS_URL", "redis://127.0.0.1:1/0")  # unreachable: nothing queued
    get_settings.cache_clear()
    disk = Store(url)
    disk.create_all()
    made = proposals(disk).consider(result(head()), "job1")
    assert made is not None
    runner = CliRunner()
    listed = runner.invoke(app, ["characters", "review", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["kind"], r["name"]) for r in rows] == [(made.id, "proposal", "Rem")]
    decided = runner.invoke(app, ["characters", "review", "--approve", str(made.id)])
    assert decided.exit_code == 0 and f"#{made.id} approved" in decided.output
    assert "Nothing waiting" in decided.output
    again = runner.invoke(app, ["characters", "review", "--reject", str(made.id)])
    assert "is not waiting" in again.output
    get_settings.cache_clear()


# --- from an analysis in the worker -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_worker_proposes_a_tagger_named_head_and_keeps_its_picture(model_settings, tmp_path, monkeypatch):
    """A scene the empty gallery cannot name but the tagger can: the analysis task's hook keeps a proposal, keeps the
    picture for review, and with ANIBOT_AUTOREF_ACCEPT queues the apply job."""
    import io
    import time

    from core.datasets.synth import CAST_BY_KEY, render_scene
    from core.storage.jobs import BLOB_PREFIX, Requester
    from tests.test_pipeline import empty_gallery_service
    from workers import tasks

    settings_changes = {"autoref_min_confidence": 0.3, "autoref_accept": True}
    service = empty_gallery_service(model_settings, tmp_path, names="alone", **settings_changes)
    settings, store = service.settings, service.store
    buffer = io.BytesIO()
    render_scene(9_200_500, characters=["natsu"]).image.save(buffer, format="PNG")
    image = service.blobs.put(buffer.getvalue())
    job = service.jobs.create("analyze", Requester("test", "chat-1", "user-1"), params={"image": image})
    outcome = service.analyze(buffer.getvalue(), top_n=3, job_id=job.id)
    [head] = outcome.result.heads
    natsu = CAST_BY_KEY["natsu"]
    assert (head.name, head.source) == (natsu.name, "tagger"), head
    sent: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(tasks.app, "send_task", lambda name, args, queue: sent.append((name, args)))
    tasks._proposals.cache_clear()
    tasks.propose_reference(service, job, outcome.result)
    [proposal] = ChatStore(store).corrections(kind="proposal")
    assert (proposal.name, proposal.series, proposal.status) == (natsu.name, natsu.series, "approved")
    assert proposal.chat_id == "chat-1" and proposal.image_sha256 == outcome.result.image_sha256
    assert [name for name, _ in sent] == ["anibot.corrections.apply"]
    _, expires = service.kv._data[BLOB_PREFIX + image]  # kept for review, not the input's short life
    assert expires - time.monotonic() >= settings.correction_keep_s - 5
    tasks.propose_reference(service, job, outcome.result)  # the same answer again: proposed once
    assert len(ChatStore(store).corrections(kind="proposal")) == 1 and len(sent) == 1
    tasks._proposals.cache_clear()
