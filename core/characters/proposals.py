"""The gallery grows from confident answers: a head the tagger named with high confidence, alone in its picture,
becomes a *proposed* reference.

A proposal is kept like a user's correction (core.chat.store, kind ``proposal``, proposed by ``PROPOSER``), so
/review and ``anibot characters review`` list it beside users' corrections and approving applies it the same way
(core.characters.corrections). With ``autoref_accept`` it is approved at once (reviewer ``AUTO_REVIEWER``). Per
character at most ``autoref_per_character`` proposals are kept (waiting, approved or applied); past it, none. A
character admins removed is never proposed (core.storage.store.removed_characters), and a proposal approved before
its character was removed is not applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from core.characters.corrections import AUTO_REVIEWER, is_removed
from core.characters.danbooru import same_character
from core.chat.store import ChatStore, Correction, CorrectionKind, CorrectionStatus
from core.vision.results import SOURCE_TAGGER, UNKNOWN, AnalysisResult

log = logging.getLogger(__name__)

PROPOSER = "tagger"  # the "user" of a proposal
PROPOSAL_PLATFORM = "anibot"
_KEPT = (CorrectionStatus.PENDING, CorrectionStatus.APPROVED, CorrectionStatus.APPLIED)


@dataclass(frozen=True)
class ProposalRules:
    min_confidence: float = 0.9
    accept: bool = False
    per_character: int = 20


def proposal_for(
    result: AnalysisResult, job_id: str, rules: ProposalRules, chat_id: str = ""
) -> Correction | None:
    """The proposal one analysis makes, or None: exactly one head, named by the tagger alone (the gallery did not
    know it) with at least ``rules.min_confidence``."""
    if len(result.heads) != 1 or rules.per_character <= 0:
        return None
    head = result.heads[0]
    if head.name == UNKNOWN or head.source != SOURCE_TAGGER or head.confidence < rules.min_confidence:
        return None
    return Correction(
        job_id=job_id,
        head=1,
        name=head.name,
        series=head.series,
        platform=PROPOSAL_PLATFORM,
        chat_id=chat_id,
        user_id=PROPOSER,
        predicted=head.name,
        image_sha256=result.image_sha256,
        box=(head.box.x1, head.box.y1, head.box.x2, head.box.y2),
        kind=CorrectionKind.PROPOSAL.value,
        reason=f"the tagger named it with {head.confidence:.0%}",
    )


class Proposals:
    def __init__(
        self,
        chats: ChatStore,
        removed: Callable[[], Iterable[tuple[str, str]]],
        rules: ProposalRules,
    ) -> None:
        self.chats = chats
        self.removed = removed
        self.rules = rules

    def kept_for(self, name: str, series: str) -> int:
        """Proposals of this character waiting, approved or applied."""
        same = self.chats.corrections(kind=CorrectionKind.PROPOSAL, name=name)
        return sum(1 for c in same if c.status in _KEPT and same_character(c.name, c.series, name, series))

    def consider(self, result: AnalysisResult, job_id: str, chat_id: str = "") -> Correction | None:
        """Keep the proposal this analysis makes (approved at once with ``accept``); None when it makes none, the
        character was removed, the head was proposed already, or the character has its share."""
        proposal = proposal_for(result, job_id, self.rules, chat_id)
        if proposal is None:
            return None
        if is_removed(self.removed(), proposal.name, proposal.series):
            log.info("no proposal for %s: admins removed that character", proposal.label)
            return None
        if self.chats.corrections(image_sha256=proposal.image_sha256, head=1, kind=CorrectionKind.PROPOSAL):
            return None  # this picture was proposed already (a repeated or cached analysis)
        kept = self.kept_for(proposal.name, proposal.series)
        if kept >= self.rules.per_character:
            log.info("no proposal for %s: it has %d already (the cap)", proposal.label, kept)
            return None
        proposal_id = self.chats.add_correction(proposal)
        if self.rules.accept:
            self.chats.set_correction_status(
                [proposal_id],
                CorrectionStatus.APPROVED,
                expected=CorrectionStatus.PENDING,
                reviewer=AUTO_REVIEWER,
                reason=f"{proposal.reason}; accepted without review (ANIBOT_AUTOREF_ACCEPT)",
            )
        stored = self.chats.correction(proposal_id)
        log.info(
            "proposal %d: %s from picture %s (%s)",
            proposal_id,
            proposal.label,
            proposal.image_sha256[:12],
            stored.status if stored else "?",
        )
        return stored
