"""Starting a front-end where it cannot start: the token never reaches the terminal, a missing extra is one
line, and the process exits 1 (real processes, a stand-in Telegram server on loopback)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.extras import ExtrasAwareGroup, missing_extra_message
from tests.conftest import REPO

TOKEN = "123456:AAE-never-print-me_0123456789"


class Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every Bot API call 404 Not Found, as the cloud Bot API does for a bad token or base URL."""

    def do_POST(self) -> None:
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        body = b'{"ok":false,"error_code":404,"description":"Not Found"}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_bot_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/bot"
    server.shutdown()


def python(
    code: str, env: dict[str, str], tmp_path: Path, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # no .env of the checkout
        env={**os.environ, "PYTHONPATH": str(REPO), "ANIBOT_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_refused_telegram_token_is_logged_redacted_and_exits_1(refusing_bot_api, tmp_path):
    """python-telegram-bot raises InvalidToken("The token `...` was rejected") on 404: it once reached stderr
    through Python's default traceback, token and all."""
    done = python(
        "from cli.main import app; app(['bot', 'telegram'])",
        {
            "ANIBOT_TELEGRAM_TOKEN": TOKEN,
            "ANIBOT_TELEGRAM_BASE_URL": refusing_bot_api,
            "ANIBOT_TELEGRAM_BASE_FILE_URL": refusing_bot_api.replace("/bot", "/file/bot"),
            "ANIBOT_REDIS_URL": os.environ.get("ANIBOT_TEST_BOT_REDIS_URL", "redis://127.0.0.1:6379/14"),
        },
        tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert TOKEN not in output and TOKEN.split(":")[1] not in output
    assert "anibot bot telegram stopped: InvalidToken" in output and "[redacted]" in output


def test_uncaught_exceptions_go_through_the_redacting_formatter(tmp_path):
    code = (
        "import threading\n"
        "from core.logs import configure_logging\n"
        "from core.settings import Settings\n"
        f"configure_logging(Settings(_env_file=None, telegram_token={TOKEN!r}))\n"
        "def fail():\n"
        f"    raise OSError('could not reach https://api.telegram.org/bot{TOKEN}/getMe')\n"
        "thread = threading.Thread(target=fail)\n"
        "thread.start(); thread.join()\n"
        f"raise RuntimeError('The token `{TOKEN}` was rejected')\n"
    )
    done = python(code, {}, tmp_path)
    assert done.returncode == 1
    assert TOKEN not in done.stderr, done.stderr
    assert "uncaught RuntimeError" in done.stderr and "uncaught OSError" in done.stderr
    assert done.stderr.count("[redacted]") >= 2


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
    """After the README's demo set-up (``.[worker,dev]``), `anibot bot telegram` ended in a traceback."""
    done = python(
        "import sys; sys.modules['telegram'] = None\nfrom cli.main import app; app(['bot', 'telegram'])",
        {"ANIBOT_TELEGRAM_TOKEN": TOKEN},
        tmp_path,
    )
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "`anibot bot telegram` needs the 'bot' extra" in lines[0] and "pip install -e '.[bot]'" in lines[0]


def test_every_command_names_its_missing_extra(monkeypatch):
    app = typer.Typer(cls=ExtrasAwareGroup)

    @app.command()
    def train() -> None:
        import torch  # noqa: F401

    @app.command()
    def broken() -> None:
        import no_such_module_of_anyone  # type: ignore[import-not-found]  # noqa: F401

    monkeypatch.setitem(sys.modules, "torch", None)
    result = CliRunner().invoke(app, ["train"])
    assert result.exit_code == 1
    assert "`anibot train` needs the 'worker' extra" in result.output and "'.[worker]'" in result.output
    other = CliRunner().invoke(app, ["broken"])  # not an extra of ours: the real error, unchanged
    assert isinstance(other.exception, ModuleNotFoundError)
    assert missing_extra_message(ModuleNotFoundError("x", name="discord.ext"), "bot discord") is not None
    assert missing_extra_message(ImportError("cannot import name 'x'"), "bot discord") is None
