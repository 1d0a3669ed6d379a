"""The web page's static files as ``anibot api`` serves them (no browser, no Redis, no worker): the fixed
allow-list, content types, the security headers, the auth middleware leaving them open, and the page's code
keeping server text out of HTML."""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Awaitable, Callable
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.api import pages
from bot.api.app import build_app
from bot.layer import CommandLayer
from core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
USER_TOKEN = "user-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"


def serve(tmp_path: Path, test: Callable[[TestClient], Awaitable[None]], **overrides: Any) -> None:
    settings = Settings(
        data_dir=tmp_path,
        models_dir=tmp_path / "models",
        database_url=f"sqlite:///{tmp_path / 'anibot.db'}",
        redis_url="redis://127.0.0.1:1/0",  # never reached: no route here needs Redis
        **overrides,
    )

    async def main() -> None:
        layer = CommandLayer.from_settings(settings)
        async with TestClient(TestServer(build_app(settings, layer))) as client:
            await test(client)

    asyncio.run(main())


def test_the_allow_list_holds_the_page_and_every_module_it_imports():
    assert {"index.html", "app.js", "style.css"} <= set(pages.STATIC)
    for name, entry in pages.STATIC.items():
        assert entry.body == (pages.STATIC_DIR / name).read_bytes()
        if name.endswith(".js"):
            for imported in re.findall(r'from\s+"\./([^"]+)"', entry.body.decode()):
                assert imported in pages.STATIC, f"{name} imports {imported}, which is not served"
    index = pages.STATIC["index.html"].body.decode()
    for linked in re.findall(r'(?:src|href)="/web/([^"]+)"', index):
        assert linked in pages.STATIC, f"index.html links {linked}, which is not served"


def test_load_static_takes_only_plain_files_of_known_types(tmp_path):
    (tmp_path / "page.html").write_text("<p>hi</p>")
    (tmp_path / "code.js").write_text("export {};")
    (tmp_path / "notes.txt").write_text("not served")
    (tmp_path / ".hidden.js").write_text("secret")
    (tmp_path / "Upper.js").write_text("odd name")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.js").write_text("in a folder")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.js"
    outside.write_text("outside")
    (tmp_path / "link.js").symlink_to(outside)
    files = pages.load_static(tmp_path)
    assert set(files) == {"page.html", "code.js"}
    assert files["code.js"].content_type == "text/javascript; charset=utf-8"
    assert files["page.html"].etag != files["code.js"].etag
    assert pages.load_static(tmp_path / "missing") == {}


def test_root_redirects_and_the_page_is_served_with_strict_headers(tmp_path):
    async def test(client: TestClient) -> None:
        root = await client.get("/", allow_redirects=False)
        assert root.status == 302 and root.headers["Location"] == "/web/"
        bare = await client.get("/web", allow_redirects=False)  # no slash, no token
        assert bare.status == 302 and bare.headers["Location"] == "/web/"
        page = await client.get("/web/")  # open: the server's user token is not needed for the files
        assert page.status == 200, await page.text()
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["Cache-Control"] == "no-cache"
        policy = dict(
            part.strip().split(" ", 1) for part in page.headers["Content-Security-Policy"].split(";")
        )
        assert policy["default-src"] == "'self'"
        assert policy["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
        assert policy["img-src"] == "'self' blob: data:"
        assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
        assert await page.read() == (pages.STATIC_DIR / "index.html").read_bytes()
        types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}
        for name in pages.STATIC:
            answer = await client.get(f"/web/{name}")
            assert answer.status == 200, name
            assert answer.headers["Content-Type"].startswith(types[Path(name).suffix]), name
            assert "Content-Security-Policy" in answer.headers and answer.headers["ETag"]
        # the API itself still wants the token
        assert (await client.get("/v1/admin/whoami")).status == 401

    serve(tmp_path, test, api_token=USER_TOKEN, api_admin_token=ADMIN_TOKEN)


@pytest.mark.parametrize(
    "path",
    [
        "/web/pages.py",
        "/web/..%2fapi%2fpages.py",
        "/web/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/web/..%5c..%5cpyproject.toml",
        "/web/static%2findex.html",
        "/web/.hidden",
        "/web/INDEX.HTML",
        "/web/index.html%00.js",
    ],
)
def test_only_listed_files_are_served(tmp_path, path):
    async def test(client: TestClient) -> None:
        answer = await client.get(path)
        assert answer.status == 404, (path, answer.status)
        body = await answer.json()
        assert body["error"]["code"] == "not_found"

    serve(tmp_path, test)


def test_a_revalidation_with_the_etag_is_a_304(tmp_path):
    async def test(client: TestClient) -> None:
        first = await client.get("/web/app.js")
        etag = first.headers["ETag"]
        again = await client.get("/web/app.js", headers={"If-None-Match": etag})
        assert again.status == 304 and again.headers["ETag"] == etag
        assert again.headers["Content-Security-Policy"] == pages.CONTENT_SECURITY_POLICY
        other = await client.get("/web/app.js", headers={"If-None-Match": '"stale"'})
        assert other.status == 200 and await other.read() == pages.STATIC["app.js"].body

    serve(tmp_path, test)


class ScriptFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self.handlers: list[str] = []
        self.styles: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        self.styles += [name for name, _ in attrs if name == "style"]
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data)


def test_the_page_has_no_inline_script_and_renders_server_text_as_text():
    finder = ScriptFinder()
    finder.feed(pages.STATIC["index.html"].body.decode())
    assert finder.scripts and all(s.get("src", "").startswith("/web/") for s in finder.scripts)
    assert finder.inline == [] and finder.handlers == [] and finder.styles == []
    forbidden = re.compile(
        r"\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function"
    )
    for name, entry in pages.STATIC.items():
        if name.endswith(".js"):
            found = forbidden.findall(entry.body.decode())
            assert not found, f"{name} builds HTML from strings: {found}"
    # the token travels in a header only: never in a URL the page builds
    api_js = pages.STATIC["api.js"].body.decode()
    assert "Authorization" in api_js and "Bearer" in api_js
    assert not re.search(
        r"[?&]token=", "".join(e.body.decode() for n, e in pages.STATIC.items() if n.endswith(".js"))
    )


def test_the_static_files_ship_in_the_package():
    """pyproject's package data covers every file the page serves (a wheel or `pip install .` has them)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["bot.web"]
    package_dir = REPO / "bot" / "web"
    assert (package_dir / "__init__.py").exists()
    for name in pages.STATIC:
        relative = (pages.STATIC_DIR / name).relative_to(package_dir).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), f"{relative} is not package data"
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert any(fnmatch("bot.web", pattern) for pattern in include)
