"""``anibot tag --queue``: each chunk of a folder goes to the workers as one ``anibot.tag`` job.

Light (no model library): the pictures' bytes go to the blob store, the job id on the wire. Up to ``window`` jobs
wait at once, so several workers (on several machines) tag one folder together.
"""

from __future__ import annotations

from typing import Any

from core.storage.jobs import Job, Requester
from core.tagging.captions import ScoredTag
from core.tagging.runner import Loaded, PictureFailure, Scored
from workers.celery_app import TAG_TASK
from workers.client import QueueClient


def decode_results(body: dict[str, Any]) -> list[Scored]:
    out: list[Scored] = []
    for picture in body["pictures"]:
        if "error" in picture:
            out.append(PictureFailure(picture["error"]["code"], picture["error"]["message"]))
        else:
            out.append([ScoredTag(str(n), float(s), str(c)) for n, s, c in picture["scores"]])
    return out


class QueueSource:
    """A :class:`core.tagging.runner.TagSource` over the queue; ``version`` is the workers' tagger, once known."""

    def __init__(self, client: QueueClient, requester: Requester, timeout_s: float | None = None) -> None:
        self.client = client
        self.requester = requester
        self.timeout_s = timeout_s
        self.version: str | None = None

    def submit(self, chunk: list[Loaded], floor: float) -> Job:
        return self.submit_blobs([item.data for item in chunk], floor)

    def submit_blobs(self, blobs: list[bytes], floor: float) -> Job:
        return self.client.submit_task(
            TAG_TASK, "tag", requester=self.requester, params={"floor": floor}, images=blobs
        )

    def collect(self, handle: Job) -> list[Scored]:
        job = self.client.wait(handle.id, self.timeout_s)
        body = self.client.result_json(job)  # raises JobFailed for a failed job
        self.version = str(body.get("model")) or None
        return decode_results(body)
