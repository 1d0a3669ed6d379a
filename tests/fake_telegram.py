"""A fake Telegram Bot API on loopback (aiohttp): enough methods for a python-telegram-bot round trip.

Tests queue updates with :meth:`FakeBotAPI.push`; every call the bot makes is recorded in ``calls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT_USER = {
    "id": 999,
    "is_bot": True,
    "first_name": "anibot",
    "username": "anibot_test_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


class FakeBotAPI:
    def __init__(self, token: str = "123:TEST") -> None:
        self.token = token
        self.calls: list[Call] = []
        self.files: dict[str, bytes] = {}  # file_id -> bytes
        self.downloads: list[str] = []
        self.admins: set[tuple[int, int]] = set()  # (chat id, user id) holding the administrator status
        self.refuse: dict[str, str] = {}  # method -> the description of the 400 Bad Request it answers with
        self._updates: list[dict[str, Any]] = []
        self._new_update = asyncio.Event()
        self._ids = itertools.count(1)
        self._message_ids = itertools.count(10_000)
        self.runner: web.AppRunner | None = None
        self.port = 0

    # --- running ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # --- what tests use -------------------------------------------------------------------------------------

    def add_file(self, file_id: str, data: bytes) -> None:
        self.files[file_id] = data

    def push(self, kind: str, payload: dict[str, Any]) -> None:
        self._updates.append({"update_id": next(self._ids), kind: payload})
        self._new_update.set()

    def message(
        self, chat_id: int, user_id: int, *, chat_type: str = "private", **fields: Any
    ) -> dict[str, Any]:
        return {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {
                "id": chat_id,
                "type": chat_type,
                **({"title": "group"} if chat_type != "private" else {}),
            },
            "from": {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"},
            **_entities(fields),
            **fields,
        }

    def photo_sizes(self, file_id: str, size: int | None = None) -> list[dict[str, Any]]:
        data_size = size if size is not None else len(self.files.get(file_id, b""))
        return [
            {
                "file_id": file_id + "-small",
                "file_unique_id": file_id + "s",
                "width": 90,
                "height": 60,
                "file_size": 900,
            },
            {
                "file_id": file_id,
                "file_unique_id": file_id + "u",
                "width": 640,
                "height": 480,
                "file_size": data_size,
            },
        ]

    def sent(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method and (chat_id is None or str(c.params.get("chat_id")) == str(chat_id))
        ]

    async def wait_for(self, predicate, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; calls: {[c.method for c in self.calls]}")
            await asyncio.sleep(0.05)

    # --- the API ----------------------------------------------------------------------------------------------

    async def _method(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        if request.content_type == "application/json":
            params = await request.json() if request.can_read_body else {}
        elif request.can_read_body:
            form = await request.post()
            for name, value in form.items():
                if hasattr(value, "file"):
                    files[name] = value.file.read()
                else:
                    params[name] = _maybe_json(str(value))
        handler = getattr(self, "_" + method, None)
        if method not in ("getUpdates",):
            self.calls.append(Call(method, params, files))
        if method in self.refuse:
            return web.json_response(
                {"ok": False, "error_code": 400, "description": self.refuse[method]}, status=400
            )
        result = await handler(params) if handler else True
        return web.json_response({"ok": True, "result": result})

    async def _download(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        file_id = path.rsplit("/", 1)[-1]
        self.downloads.append(file_id)
        return web.Response(body=self.files[file_id])

    async def _getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return BOT_USER

    async def _getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        timeout = min(float(params.get("timeout") or 0), 1.0)
        pending = [u for u in self._updates if u["update_id"] >= offset]
        if not pending and timeout:
            self._new_update.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_update.wait(), timeout)
            pending = [u for u in self._updates if u["update_id"] >= offset]
        return pending

    async def _getFile(self, params: dict[str, Any]) -> dict[str, Any]:
        file_id = str(params["file_id"])
        return {
            "file_id": file_id,
            "file_unique_id": file_id + "u",
            "file_size": len(self.files.get(file_id, b"")),
            "file_path": f"photos/{file_id}",
        }

    def _sent_message(self, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": int(params["chat_id"]), "type": "private"},
            "from": BOT_USER,
            **extra,
        }

    async def _sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._sent_message(params, text=params.get("text", ""))

    async def _sendPhoto(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._sent_message(params, caption=params.get("caption", ""), photo=self.photo_sizes("sent"))

    async def _getChatMember(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id, user_id = int(params["chat_id"]), int(params["user_id"])
        status = "administrator" if (chat_id, user_id) in self.admins else "member"
        member: dict[str, Any] = {
            "status": status,
            "user": {"id": user_id, "is_bot": False, "first_name": "u"},
        }
        if status == "administrator":
            member |= {
                "can_be_edited": False,
                "is_anonymous": False,
                "can_manage_chat": True,
                "can_delete_messages": True,
                "can_manage_video_chats": True,
                "can_restrict_members": True,
                "can_promote_members": False,
                "can_change_info": True,
                "can_invite_users": True,
                "can_post_stories": False,
                "can_edit_stories": False,
                "can_delete_stories": False,
            }
        return member


def _maybe_json(value: str) -> Any:
    if value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if value in ("true", "false"):
        return value == "true"
    return value


def _entities(fields: dict[str, Any]) -> dict[str, Any]:
    """What Telegram adds to a message: a bot_command entity for a leading /command (PTB's CommandHandler needs
    it), in the text or the caption."""
    for key, entity_key in (("text", "entities"), ("caption", "caption_entities")):
        value = fields.get(key, "")
        if value.startswith("/"):
            length = len(value.split(" ", 1)[0])
            return {entity_key: [{"type": "bot_command", "offset": 0, "length": length}]}
    return {}
