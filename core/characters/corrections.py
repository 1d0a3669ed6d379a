"""Users' corrections of wrong names, from "Wrong? Tell me who" to a gallery reference.

A correction names one head of one picture. It waits (``pending``) until an admin approves it in /review, or,
with ``corrections_auto_accept`` = N (at least 2), until N different people of one platform gave the same name
(case-insensitively) for the same head of the same picture. Auto-accepting only ever adds references to a
character the gallery already knows: a new name always waits for an admin. People count on one platform at a
time (a Discord and a Telegram account may be one person), and each person's auto-accepted corrections are
limited per day (``corrections_auto_accept_per_day``): past it, that person no longer counts.

Approved corrections are applied by the ``anibot.corrections.apply`` task: the head is cut out of the kept
picture and taught as a reference of the named character. A correction whose picture expired before that ends
``expired`` with its reason, never silently dropped.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from PIL import Image

from core.characters.danbooru import same_character
from core.characters.teaching import PreparedReference, TeachOutcome, reference_sha256
from core.chat.store import Box, ChatStore, Correction, CorrectionStatus
from core.vision.results import Box as ResultBox

log = logging.getLogger(__name__)

AUTO_REVIEWER = "auto"  # the reviewer of a correction accepted because enough users agreed
MIN_AUTO_ACCEPT = 2  # agreeing people auto-accept needs at the least (one person alone never does)
AUTO_ACCEPT_WINDOW = timedelta(days=1)  # the per-person limit of auto-accepted corrections counts over this
EXPIRED_REASON = "the picture expired before the correction was applied"
REMOVED_REASON = "admins removed this character after it was proposed"
# corrections that still count as a user's say (a rejected one does not)
_STANDING = (CorrectionStatus.PENDING, CorrectionStatus.APPROVED, CorrectionStatus.APPLIED)


def head_crop(image: Image.Image, box: Box) -> Image.Image:
    """The head as the pipeline crops it for identification (so the reference matches the query)."""
    return image.convert("RGB").crop(ResultBox(*box).crop_region())


def head_crop_png(image: Image.Image, box: Box, *, max_side: int = 512) -> bytes:
    """The head crop as a PNG for a reviewer (at most ``max_side`` pixels a side)."""
    crop = head_crop(image, box)
    crop.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    crop.save(buffer, format="PNG")
    return buffer.getvalue()


def is_known(characters: Iterable[tuple[str, str]], name: str, series: str) -> bool:
    """Whether ``name`` (and ``series``, when given) is a character the gallery has, case-insensitively, as
    :meth:`core.characters.teaching.Teacher.resolve` would find it."""
    folded, series_folded = name.casefold(), series.casefold()
    same = [s.casefold() for n, s in characters if n.casefold() == folded]
    return series_folded in same if series else bool(same)


def is_removed(removed: Iterable[tuple[str, str]], name: str, series: str) -> bool:
    """Whether (name, series) is one of the characters admins removed (core.characters.danbooru's sameness)."""
    return any(same_character(n, s, name, series) for n, s in removed)


@dataclass(frozen=True)
class Recorded:
    """What became of a correction a user just gave."""

    correction: Correction
    agreeing: int  # different users (this one included) who gave this name for this head
    accepted: tuple[int, ...] = ()  # ids approved just now because enough users agreed
    waits_because: str = ""  # why enough agreeing users did not accept it (a new name, say)


@dataclass(frozen=True)
class PendingReview:
    correction: Correction
    agreeing: int
    waiting: int  # pending corrections in all, this one included


class Teaches(Protocol):
    """What applying needs of :class:`core.characters.teaching.Teacher`."""

    def add(self, name: str, series: str, references: Sequence[PreparedReference]) -> TeachOutcome: ...


@dataclass(frozen=True)
class ApplyReport:
    applied: tuple[Correction, ...] = ()
    expired: tuple[Correction, ...] = ()
    taught: tuple[str, ...] = ()  # the characters' names as the gallery has them, in order, once each
    gallery_version: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def message(self) -> str:
        if not self.applied and not self.expired:
            return "No approved corrections were waiting to be applied."
        parts = []
        if self.applied:
            n = len(self.applied)
            parts.append(f"Added {n} correction{'s' * (n != 1)} as references ({', '.join(self.taught)}).")
        if self.expired:
            n = len(self.expired)
            which = ", ".join(f"#{c.id} {c.label}" for c in self.expired)
            parts.append(
                f"{n} correction{'s' * (n != 1)} could not be applied because the picture expired ({which})."
            )
        return " ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "message": self.message,
            "applied": [c.id for c in self.applied],
            "expired": [c.id for c in self.expired],
            "characters": list(self.taught),
            "gallery_version": self.gallery_version,
        }


class Corrections:
    """The review rules over the corrections kept in a :class:`ChatStore`."""

    def __init__(
        self,
        chats: ChatStore,
        *,
        auto_accept: int = 0,
        per_user_per_day: int = 20,
        characters: Callable[[], Iterable[tuple[str, str]]] | None = None,
        removed: Callable[[], Iterable[tuple[str, str]]] | None = None,
    ) -> None:
        if auto_accept and auto_accept < MIN_AUTO_ACCEPT:
            raise ValueError(f"auto-accept needs at least {MIN_AUTO_ACCEPT} agreeing people (or 0 for never)")
        self.chats = chats
        self.auto_accept = (
            auto_accept  # N > 0: N different people of one platform agreeing accept a correction
        )
        self.per_user_per_day = per_user_per_day
        # the (name, series) of every character the gallery knows; None: nothing is auto-accepted
        self.characters = characters
        # the characters admins removed: an approved proposal of one is not applied
        self.removed = removed

    # --- giving and agreeing -----------------------------------------------------------------------------

    def _agreeing(self, correction: Correction) -> list[Correction]:
        """The standing corrections that give this correction's name to its head (case-insensitively)."""
        same_head = self.chats.corrections(image_sha256=correction.image_sha256, head=correction.head)
        folded = correction.name.casefold()
        return [c for c in same_head if c.status in _STANDING and c.name.casefold() == folded]

    def agreeing(self, correction: Correction) -> int:
        """Different users who gave this name for this head (one user saying it twice counts once)."""
        return len({c.user_key for c in self._agreeing(correction)})

    def auto_accepted_today(self, platform: str, user_id: str) -> int:
        """Corrections of this person accepted without an admin in the last day."""
        since = datetime.now(UTC) - AUTO_ACCEPT_WINDOW
        return len(
            self.chats.corrections(
                platform=platform, user_id=user_id, reviewer=AUTO_REVIEWER, reviewed_since=since
            )
        )

    def counting_people(self, agreeing: Sequence[Correction]) -> int:
        """The most agreeing people on any one platform, leaving out those past their daily limit."""
        people = {(c.platform, c.user_id) for c in agreeing}
        within = [p for p in people if self.auto_accepted_today(*p) < self.per_user_per_day]
        return max(Counter(platform for platform, _ in within).values(), default=0)

    def record(self, correction: Correction) -> Recorded:
        """Keep a user's correction; with enough agreeing people on one platform and a character the gallery
        knows, accept them all (the caller queues the apply job when ``accepted`` is not empty)."""
        correction_id = self.chats.add_correction(correction)
        stored = self.chats.correction(correction_id)
        assert stored is not None
        agreeing = self._agreeing(stored)
        users = len({c.user_key for c in agreeing})
        if self.auto_accept <= 0 or users < self.auto_accept:
            return Recorded(stored, users)
        if self.characters is None or not is_known(self.characters(), stored.name, stored.series):
            log.info(
                "correction %d names a new character (%s): it waits for an admin", correction_id, stored.label
            )
            return Recorded(stored, users, waits_because="new_character")
        people = self.counting_people(agreeing)
        if people < self.auto_accept:
            log.info(
                "correction %d: %d users agree but only %d count (one platform, within the daily limit)",
                correction_id,
                users,
                people,
            )
            return Recorded(stored, users, waits_because="not_enough_people")
        pending = [c.id for c in agreeing if c.status == CorrectionStatus.PENDING and c.id is not None]
        accepted = self.chats.set_correction_status(
            pending,
            CorrectionStatus.APPROVED,
            expected=CorrectionStatus.PENDING,
            reviewer=AUTO_REVIEWER,
            reason=f"{people} users agreed",
        )
        log.info(
            "corrections %s accepted: %d users agree on head %d of %s",
            accepted,
            people,
            stored.head,
            stored.image_sha256[:12],
        )
        stored = self.chats.correction(correction_id) or stored
        return Recorded(stored, people, tuple(accepted))

    # --- review ------------------------------------------------------------------------------------------

    def next_pending(self, after_id: int = 0) -> PendingReview | None:
        """The oldest pending correction (after ``after_id``: Skip moves on), with how many users agree."""
        waiting = self.chats.corrections(status=CorrectionStatus.PENDING)
        later = [c for c in waiting if c.id is not None and c.id > after_id]
        if not later:
            return None
        return PendingReview(later[0], self.agreeing(later[0]), len(waiting))

    def approve(self, correction_id: int, reviewer: str) -> Correction | None:
        """Approve a pending correction; None when it is not pending (already reviewed, or no such id)."""
        return self._review(correction_id, CorrectionStatus.APPROVED, reviewer)

    def reject(self, correction_id: int, reviewer: str) -> Correction | None:
        return self._review(correction_id, CorrectionStatus.REJECTED, reviewer)

    def _review(self, correction_id: int, status: CorrectionStatus, reviewer: str) -> Correction | None:
        changed = self.chats.set_correction_status(
            [correction_id], status, expected=CorrectionStatus.PENDING, reviewer=reviewer
        )
        if not changed:
            return None
        log.info("correction %d %s by %s", correction_id, status, reviewer)
        return self.chats.correction(correction_id)

    # --- applying ----------------------------------------------------------------------------------------

    def to_apply(self) -> list[Correction]:
        return self.chats.corrections(status=CorrectionStatus.APPROVED)

    def _end_approved(self, corrections: Sequence[Correction], status: CorrectionStatus, reason: str) -> None:
        """Approved corrections that will not be applied end in ``status``, with the reason."""
        ids = [c.id for c in corrections if c.id is not None]
        self.chats.set_correction_status(ids, status, expected=CorrectionStatus.APPROVED, reason=reason)

    def apply(self, teacher: Teaches, picture: Callable[[str], Image.Image | None]) -> ApplyReport:
        """Teach every approved correction not applied yet. ``picture`` gives the decoded picture of an image
        sha256, or None when it expired. Safe to run twice: references are keyed by picture and box, and a
        correction is marked applied only after its reference was stored."""
        approved = self.to_apply()
        removed = list(self.removed()) if self.removed is not None else []
        withdrawn = [c for c in approved if c.is_proposal and is_removed(removed, c.name, c.series)]
        if withdrawn:
            self._end_approved(withdrawn, CorrectionStatus.REJECTED, REMOVED_REASON)
            log.info("proposals %s not applied: %s", [c.id for c in withdrawn], REMOVED_REASON)
            approved = [c for c in approved if c not in withdrawn]
        expired: list[Correction] = []
        groups: dict[tuple[str, str], list[tuple[Correction, PreparedReference]]] = {}
        pictures: dict[str, Image.Image | None] = {}
        for correction in approved:
            assert correction.id is not None
            sha = correction.image_sha256
            if sha not in pictures:
                pictures[sha] = picture(sha) if sha else None
            image = pictures[sha]
            if image is None or correction.box is None:
                expired.append(correction)
                continue
            reference = PreparedReference(
                sha256=reference_sha256(sha, correction.box),
                crop=head_crop(image, correction.box),
                note="",
                picture=image,
                box=ResultBox(*correction.box),
            )
            key = (correction.name.casefold(), correction.series.casefold())
            groups.setdefault(key, []).append((correction, reference))
        if expired:
            self._end_approved(expired, CorrectionStatus.EXPIRED, EXPIRED_REASON)
            for c in expired:
                log.warning(
                    "correction %s (%s, head %d of %s) not applied: %s",
                    c.id,
                    c.label,
                    c.head,
                    c.image_sha256[:12] or "no picture",
                    EXPIRED_REASON,
                )
        applied: list[Correction] = []
        taught: list[str] = []
        version: int | None = None
        notes: list[str] = []
        for items in groups.values():
            first = items[0][0]
            unique = list({ref.sha256: ref for _, ref in items}.values())
            outcome = teacher.add(first.name, first.series, unique)
            ids = [c.id for c, _ in items if c.id is not None]
            self.chats.set_correction_status(
                ids, CorrectionStatus.APPLIED, expected=CorrectionStatus.APPROVED
            )
            applied.extend(c for c, _ in items)
            if outcome.name not in taught:
                taught.append(outcome.name)
            version = outcome.gallery_version if outcome.gallery_version is not None else version
            notes.extend(outcome.notes)
            log.info("corrections %s applied: %d references of %s", ids, len(unique), outcome.label)
        return ApplyReport(tuple(applied), tuple(expired), tuple(taught), version, tuple(notes))
