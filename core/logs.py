"""One logging setup for the CLI, workers and bots."""

from __future__ import annotations

import json
import logging
import sys
import threading
from types import TracebackType

from pydantic import SecretStr

from core.settings import Settings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


class RedactingFormatter(logging.Formatter):
    """Wraps a formatter and blanks the settings' secrets out of every finished line, tracebacks included (the
    Telegram token is part of every Bot API URL, and PTB's InvalidToken message quotes it)."""

    def __init__(self, inner: logging.Formatter, secrets: list[str]) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for secret in self.secrets:
            line = line.replace(secret, "[redacted]")
        return line


def secrets_of(settings: Settings) -> list[str]:
    values = (getattr(settings, name) for name in type(settings).model_fields)
    return [v.get_secret_value() for v in values if isinstance(v, SecretStr)]


def install_excepthook() -> None:
    """Uncaught exceptions, in the main thread and in others, go through the logging handlers (and so through
    :class:`RedactingFormatter`) instead of Python's default printing, which would show a token a message quotes."""

    def log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        logging.getLogger("anibot").critical("uncaught %s", kind.__name__, exc_info=(kind, value, tb))

    def log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = log_uncaught
    threading.excepthook = log_uncaught_in_thread


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    inner = (
        JsonFormatter()
        if settings.log_json
        else logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    )
    handler.setFormatter(RedactingFormatter(inner, secrets_of(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    install_excepthook()
    # httpx logs every request URL at INFO: a Telegram URL holds the bot token
    for noisy in ("PIL", "urllib3", "matplotlib", "asyncio", "faiss.loader", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
