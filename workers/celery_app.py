"""The Celery application: queues, routing and reliability settings. Tasks live in workers.tasks.

Queues: ``gpu`` (inference), ``cpu`` (light work, recommendations), ``train`` (re-indexing and training).
Nothing here imports torch or loads a model: models are loaded lazily inside each worker child process.
"""

from __future__ import annotations

import os
import sys

from celery import Celery, signals
from kombu import Exchange, Queue

from core.logs import configure_logging
from core.settings import Settings, get_settings

QUEUES = ("gpu", "cpu", "train")
ANALYZE_TASK = "anibot.analyze"
CATALOG_TASK = "anibot.catalog.query"
ADD_CHARACTER_TASK = "anibot.characters.add"
REMOVE_CHARACTER_TASK = "anibot.characters.remove"
REMOVE_REFERENCE_TASK = "anibot.characters.remove_reference"
PREVIEW_HEADS_TASK = "anibot.characters.preview"
RETRAIN_TASK = "anibot.retrain"
REINDEX_TASK = "anibot.gallery.reindex"
APPLY_CORRECTIONS_TASK = "anibot.corrections.apply"
APPLY_KIND = "corrections.apply"  # the kind of the jobs of APPLY_CORRECTIONS_TASK
HEAD_CROP_TASK = "anibot.corrections.crop"
TAG_TASK = "anibot.tag"
TASK_MODULES = (
    "workers.tasks",
    "workers.admin_tasks",
    "workers.catalog_tasks",
    "workers.correction_tasks",
    "workers.tag_tasks",
)
# every task's queue, by its registered name: senders and workers agree through this one table
TASK_QUEUES = {
    ANALYZE_TASK: "gpu",
    CATALOG_TASK: "cpu",
    ADD_CHARACTER_TASK: "train",
    REMOVE_CHARACTER_TASK: "train",
    REMOVE_REFERENCE_TASK: "train",
    PREVIEW_HEADS_TASK: "gpu",  # an admin waits for it: detection only, next to the analyses
    RETRAIN_TASK: "train",
    REINDEX_TASK: "train",
    APPLY_CORRECTIONS_TASK: "train",
    HEAD_CROP_TASK: "cpu",
    TAG_TASK: "gpu",
}


class ConfigurationError(RuntimeError):
    pass


def worker_argv(queues: list[str], *, concurrency: int, name: str, loglevel: str = "INFO") -> list[str]:
    """The command line of a Celery worker of this app (used by `anibot worker`, the benchmark and the tests)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app:app",
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "--loglevel",
        loglevel,
        "-n",
        name,
        "--without-gossip",
        "--without-mingle",
    ]


def worker_threads(concurrency: int) -> int:
    """Inference threads per worker process when ``concurrency`` processes share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // concurrency)


def make_app(settings: Settings) -> Celery:
    if settings.visibility_timeout_s <= settings.task_time_limit_s:
        raise ConfigurationError(
            f"ANIBOT_VISIBILITY_TIMEOUT_S ({settings.visibility_timeout_s}) must be longer than "
            f"ANIBOT_TASK_TIME_LIMIT_S ({settings.task_time_limit_s}), or Redis redelivers tasks still running"
        )
    app = Celery("anibot", broker=settings.redis_url, include=list(TASK_MODULES))
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # job state and results live in the job store (core.storage.jobs), not in Celery
        # one direct exchange per queue: a task sent to "gpu" lands in the gpu queue only
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_queue="cpu",
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - 5),
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # sweep for unacknowledged tasks of dead workers every redelivery_check_s (kombu's default is
            # every 10 s x throttle 10, so a killed worker's job waited ~100 s more than the visibility timeout)
            "unacked_restore_interval": settings.redelivery_check_s,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


app = make_app(get_settings())


@signals.setup_logging.connect
def _setup_logging(**_: object) -> None:
    configure_logging(get_settings())
