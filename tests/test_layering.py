"""What each process imports: front-ends and the Celery parent stay free of model libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

HEAVY = ("torch", "onnxruntime", "ultralytics", "timm", "transformers", "faiss")


def imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "import workers.client",  # what the bots and `anibot analyze --queue` use
        "import workers.celery_app, workers.tasks",  # the Celery parent process before it forks
        "import cli.main",
        "import bot",
        "import bot.layer, bot.commands",  # the command layer every front-end shares
        "import bot.discord.app",
        "import bot.telegram.app",
        "import bot.api.app",
        "import workers.catalog_tasks, workers.admin_tasks",  # imported by the Celery parent too
    ],
)
def test_light_processes_do_not_import_model_libraries(statement):
    loaded = imported_after(statement)
    assert not {name for name in loaded if name.split(".")[0] in HEAVY}


def test_core_never_imports_a_platform_sdk_or_celery():
    for path in (REPO / "core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for banned in ("import discord", "import telegram", "from celery", "import celery"):
            assert banned not in text, f"{path.relative_to(REPO)} uses {banned!r}"
