"""What each process imports: front-ends and the Celery parent stay free of model libraries."""

from __future__ import annotations

import ast
import re
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


# --- imports inside core point one way ----------------------------------------------------------------------------

# A core package may import its own modules and those of packages of a lower rank, never of its rank or above:
# settings at the bottom, storage and logging on it, the domains above, the analysis service on top.
RANKS = {
    "settings": 0,
    "logs": 1,
    "storage": 1,
    "vision": 2,
    "datasets": 3,
    "chat": 3,
    "catalog": 3,
    "tagging": 3,
    "characters": 4,
    "evaluation": 5,
    "learning": 6,
    "analysis": 7,
}
OUTSIDE_CORE = ("bot", "workers", "cli", "scripts", "tests")


def core_package(dotted: str) -> str:
    """``core.vision.slots.base`` -> ``vision``; ``core.settings`` -> ``settings``."""
    return dotted.split(".")[1]


def imported_names(path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``, and of every "module:attr" / dotted-path string naming a
    core module (the lazy loader tables)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY_PATH.fullmatch(node.value)
        ):
            found.append((node.lineno, node.value.partition(":")[0]))
    return found


LAZY_PATH = re.compile(r"core(\.\w+)+(:[\w.]+)?")


def layering_violations(root) -> list[str]:
    problems = []
    for path in sorted((root / "core").rglob("*.py")):
        relative = path.relative_to(root)
        parts = relative.with_suffix("").parts
        if len(parts) < 2 or parts[1] == "__init__":
            continue
        own = parts[1]
        if own not in RANKS:
            problems.append(f"{relative}: package {own!r} has no rank in RANKS")
            continue
        for line, name in imported_names(path):
            top = name.split(".")[0]
            if top in OUTSIDE_CORE:
                problems.append(f"{relative}:{line} imports {name} (core never imports what is built on it)")
            if top != "core" or name == "core":
                continue
            other = core_package(name)
            if other == own:
                continue
            if other not in RANKS:
                problems.append(f"{relative}:{line} imports {name}: unknown core package {other!r}")
            elif RANKS[other] >= RANKS[own]:
                problems.append(
                    f"{relative}:{line} imports {name}: {own} (rank {RANKS[own]}) may not import {other} "
                    f"(rank {RANKS[other]})"
                )
    return problems


def test_imports_inside_core_point_one_way():
    assert layering_violations(REPO) == []


def test_settings_import_no_other_core_module():
    assert [
        name for _, name in imported_names(REPO / "core" / "settings.py") if name.startswith("core")
    ] == []


def test_a_wrong_way_import_is_caught(tmp_path):
    (tmp_path / "core" / "storage").mkdir(parents=True)
    (tmp_path / "core" / "vision").mkdir()
    (tmp_path / "core" / "storage" / "store.py").write_text("from core.vision.results import Box\n")
    (tmp_path / "core" / "vision" / "results.py").write_text(
        "from core.storage.kv import KeyValue\nLOADER = 'core.analysis.service:AnalysisService'\n"
    )
    problems = layering_violations(tmp_path)
    assert len(problems) == 2
    assert (
        "core/storage/store.py:1 imports core.vision.results: storage (rank 1) may not import vision"
        in problems[0]
    )
    assert "core/vision/results.py:2 imports core.analysis.service" in problems[1]


def test_every_core_package_says_what_lives_there():
    for package in sorted(p for p in (REPO / "core").iterdir() if p.is_dir() and p.name != "__pycache__"):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
        assert doc, f"core/{package.name}/__init__.py has no docstring"
        assert package.name in RANKS, f"core/{package.name} has no rank in tests/test_layering.py RANKS"
