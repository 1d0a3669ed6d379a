"""`anibot models pull`: pinned downloads from a stand-in hub on loopback, hash checks, atomic installs, the CLI.

The stand-in hub serves files under Hugging Face's URL layout (``/<repo>/resolve/<revision>/<path>``) and is
reached through ``HF_ENDPOINT``, exactly as a mirror would be. The model pulled is a stand-in WD14 tagger made
by the tagger tests' own exporter, so the installed folder is loaded by the real ``wd14-onnx`` loader.
No network beyond 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr
from typer.testing import CliRunner

from core.settings import Settings, get_settings
from core.vision.slots.base import Manifest
from core.vision.slots.catalog import DEFAULT_CATALOG, CatalogEntry, CatalogError, Catalogue
from core.vision.slots.pull import (
    STAGING_DIR,
    DigestMismatch,
    HubRefused,
    HubSource,
    LocalSource,
    MissingLocalFile,
    PullError,
    UnverifiedFiles,
    pull,
)
from core.vision.slots.registry import LOADERS, SLOTS, active_manifest, load_slot, read_active, set_active
from core.vision.slots.tagger import TagDef, write_selected_tags
from tests.conftest import REPO

REVISION = "0123456789abcdef0123456789abcdef01234567"
REPO_ID = "anibot-tests/wd14-stand-in"
TOKEN = "hf_test_secret_token_42"
NAME = "wd14-stand-in"

# the manifest roles each format's loader reads (core/vision/slots/{detector,embedder,tagger}.py)
ROLES_BY_FORMAT = {
    "yolo-onnx": {"onnx"},
    "yolo-pt": {"pt"},
    "onnx-embedder": {"onnx"},
    "timm-embedder": {"weights"},
    "wd14-onnx": {"onnx", "tags"},
}


# --- a stand-in hub on loopback -----------------------------------------------------------------------------------


class StandInHub:
    """Files by URL path, an optional HTTP status per path, and every request's path and headers."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.status: dict[str, int] = {}
        self.redirects: dict[str, str] = {}  # path -> absolute URL (as the hub sends LFS files to a CDN)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.endpoint = ""

    def serve(self, relative: str, data: bytes, revision: str = REVISION, repo: str = REPO_ID) -> None:
        self.files[f"/{repo}/resolve/{revision}/{relative}"] = data


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_GET(self) -> None:
        hub: StandInHub = self.server.hub
        hub.requests.append((self.path, dict(self.headers.items())))
        if self.path in hub.redirects:
            self.send_response(302)
            self.send_header("Location", hub.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = hub.status.get(self.path)
        body = hub.files.get(self.path)
        if status is not None or body is None:
            self.send_error(status or 404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving() -> Iterator[StandInHub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.hub = StandInHub()  # type: ignore[attr-defined]
    server.hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.hub  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def hub() -> Iterator[StandInHub]:
    with serving() as stand_in:
        yield stand_in


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- a stand-in WD14 tagger and its catalogue entry ---------------------------------------------------------------

TAGS = [
    TagDef(1, "smile", 0, 10),
    TagDef(2, "hat", 0, 5),
    TagDef(3, "aoi", 4, 3),
    TagDef(4, "general", 9, 1),
    TagDef(5, "sensitive", 9, 1),
]
LOGITS = np.array([3.0, -3.0, 3.0, -3.0, 2.0], np.float32)  # smile, aoi and the rating "sensitive" pass


@pytest.fixture(scope="module")
def wd14_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    pytest.importorskip("torch")
    from tests.test_tagger import export_stand_in

    folder = tmp_path_factory.mktemp("wd14")
    onnx_path = export_stand_in(folder / "model.onnx", LOGITS, size=32)
    tags_path = write_selected_tags(folder / "selected_tags.csv", TAGS)
    return {"model.onnx": onnx_path.read_bytes(), "selected_tags.csv": tags_path.read_bytes()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_data(files: dict[str, bytes], **file_overrides: dict[str, Any]) -> dict[str, Any]:
    """A catalogue entry (as JSON data) pinning ``files``; ``file_overrides`` replace fields of one role."""
    specs = {
        "onnx": ("model.onnx", files["model.onnx"]),
        "tags": ("selected_tags.csv", files["selected_tags.csv"]),
    }
    return {
        "name": NAME,
        "slot": "tagger",
        "format": "wd14-onnx",
        "summary": "stand-in",
        "licence": "MIT",
        "homepage": f"https://huggingface.co/{REPO_ID}",
        "files": {
            role: {
                "url": f"https://huggingface.co/{REPO_ID}/resolve/{REVISION}/{filename}",
                "sha256": sha256(data),
                "size": len(data),
                **file_overrides.get(role, {}),
            }
            for role, (filename, data) in specs.items()
        },
        "thresholds": {"general": 0.5, "character": 0.9},
        "input_size": 32,
        "extra": {},
        "sources": {"files": "computed by the test from the stand-in bytes"},
    }


def make_entry(files: dict[str, bytes], **file_overrides: dict[str, Any]) -> CatalogEntry:
    return Catalogue.from_dict({"models": [entry_data(files, **file_overrides)]}).get(NAME)


def serve_all(hub: StandInHub, files: dict[str, bytes]) -> None:
    for filename, data in files.items():
        hub.serve(filename, data)


def settings_for(models_dir: Path) -> Settings:
    return Settings(_env_file=None, models_dir=models_dir, device="cpu", onnx_threads=1)


# --- pull, through the Python API ---------------------------------------------------------------------------------


def test_pull_streams_checks_installs_activates_and_loads(
    hub: StandInHub, wd14_files: dict[str, bytes], tmp_path: Path
) -> None:
    serve_all(hub, wd14_files)
    models_dir = tmp_path / "models"
    set_active(models_dir, "tagger", "starter-tagger")
    events: list[tuple[str, int, int | None]] = []

    result = pull(
        make_entry(wd14_files),
        models_dir,
        HubSource(hub.endpoint, SecretStr(TOKEN)),
        progress=lambda f, done, total: events.append((f.filename, done, total)),
    )

    folder = models_dir / "tagger" / NAME
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx", "selected_tags.csv"]
    for filename, data in wd14_files.items():
        assert (folder / filename).read_bytes() == data
    manifest = Manifest.load(folder)
    assert manifest == result.manifest and not result.already_installed and result.activated
    assert manifest.files == {"onnx": "model.onnx", "tags": "selected_tags.csv"}
    assert manifest.sha256 == {name: sha256(data) for name, data in wd14_files.items()}
    assert manifest.thresholds == {"general": 0.5, "character": 0.9} and manifest.input_size == 32
    assert (
        manifest.extra["source"]["urls"]["onnx"]
        == f"https://huggingface.co/{REPO_ID}/resolve/{REVISION}/model.onnx"
    )
    assert REVISION[:8] in manifest.provenance
    assert not (models_dir / STAGING_DIR).exists()

    assert read_active(models_dir) == {"tagger": NAME}
    assert active_manifest(models_dir, "tagger") == manifest
    tagger = load_slot(manifest, settings_for(models_dir))
    tags = tagger.tag(Image.new("RGB", (50, 40), (200, 30, 30)))
    assert [(t.name, t.category) for t in tags] == [
        ("smile", "general"),
        ("aoi", "character"),
        ("sensitive", "rating"),
    ]

    for filename, data in wd14_files.items():
        mine = [(done, total) for name, done, total in events if name == filename]
        assert mine and mine[-1] == (len(data), len(data))
        assert [done for done, _ in mine] == sorted(done for done, _ in mine)
    paths = sorted(path for path, _ in hub.requests)
    assert paths == sorted(f"/{REPO_ID}/resolve/{REVISION}/{name}" for name in wd14_files)
    # a plain-http hub that is not huggingface.co gets no token (see test_the_token_goes_over_https_...)
    assert all("Authorization" not in headers for _, headers in hub.requests)


def test_no_token_sends_no_authorization(
    hub: StandInHub, wd14_files: dict[str, bytes], tmp_path: Path
) -> None:
    serve_all(hub, wd14_files)
    pull(make_entry(wd14_files), tmp_path / "models", HubSource(hub.endpoint), activate=False)
    assert hub.requests and all("Authorization" not in headers for _, headers in hub.requests)
    assert read_active(tmp_path / "models") == {}  # --no-activate leaves active.json alone


def test_the_token_goes_over_https_to_trusted_hosts_only_never_where_it_redirects() -> None:
    """HF_TOKEN went to any HF_ENDPOINT, plain http too: now only over https, to huggingface.co or a host
    named in ANIBOT_HF_TOKEN_HOSTS, and as an unredirected header (never to the storage host of a redirect)."""
    file = make_entry({"model.onnx": b"x", "selected_tags.csv": b"y"}).files[0]
    secret = SecretStr(TOKEN)

    def sent(source: HubSource) -> str | None:
        request = source.request(file)
        assert "Authorization" not in request.headers  # redirected requests never carry it
        return request.unredirected_hdrs.get("Authorization")

    assert sent(HubSource("https://huggingface.co", secret)) == f"Bearer {TOKEN}"
    for untrusted in (
        "http://huggingface.co",  # plain http
        "https://hf-mirror.example",  # a mirror nobody named
        "https://huggingface.co.evil.example",
        "http://127.0.0.1:8080",
    ):
        assert sent(HubSource(untrusted, secret)) is None, untrusted
    named = {"hf_token": TOKEN, "hf_token_hosts": "hf-mirror.example"}
    mirror = HubSource.from_settings(
        Settings(_env_file=None, hf_endpoint="https://hf-mirror.example", **named)
    )
    assert sent(mirror) == f"Bearer {TOKEN}"
    plain = HubSource.from_settings(Settings(_env_file=None, hf_endpoint="http://hf-mirror.example", **named))
    assert sent(plain) is None


def test_no_token_reaches_a_plain_http_hub_nor_where_it_redirects(
    hub: StandInHub, wd14_files: dict[str, bytes], tmp_path: Path
) -> None:
    with serving() as storage:  # another host:port, as huggingface.co redirects LFS files to its CDN
        serve_all(storage, wd14_files)
        for filename in wd14_files:
            path = f"/{REPO_ID}/resolve/{REVISION}/{filename}"
            hub.redirects[path] = storage.endpoint + path
        result = pull(make_entry(wd14_files), tmp_path / "models", HubSource(hub.endpoint, SecretStr(TOKEN)))
    assert result.manifest.sha256["model.onnx"] == sha256(wd14_files["model.onnx"])
    assert len(hub.requests) == len(storage.requests) == 2
    assert all("Authorization" not in headers for _, headers in [*hub.requests, *storage.requests])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"sha256": "0" * 64}, r"selected_tags\.csv: sha256 mismatch, expected 0{64}, got [0-9a-f]{64}"),
        ({"size": 10**6}, r"selected_tags\.csv: expected 1000000 bytes, got \d+"),
        ({"size": 7}, r"selected_tags\.csv: more than the pinned 7 bytes"),
    ],
)
def test_wrong_bytes_are_refused_and_nothing_is_installed(
    hub: StandInHub, wd14_files: dict[str, bytes], tmp_path: Path, override: dict[str, Any], message: str
) -> None:
    serve_all(hub, wd14_files)
    models_dir = tmp_path / "models"
    with pytest.raises(DigestMismatch, match=message):
        pull(make_entry(wd14_files, tags=override), models_dir, HubSource(hub.endpoint))
    assert not (models_dir / "tagger" / NAME).exists()
    assert not (models_dir / STAGING_DIR).exists()
    assert read_active(models_dir) == {}


def test_installed_model_is_kept_until_a_forced_pull_succeeds(
    hub: StandInHub, wd14_files: dict[str, bytes], tmp_path: Path
) -> None:
    serve_all(hub, wd14_files)
    models_dir = tmp_path / "models"
    source = HubSource(hub.endpoint)
    first = pull(make_entry(wd14_files), models_dir, source)
    requests_after_first = len(hub.requests)

    again = pull(make_entry(wd14_files), models_dir, source)
    assert again.already_installed and again.manifest == first.manifest
    assert len(hub.requests) == requests_after_first  # nothing downloaded

    with pytest.raises(DigestMismatch):  # a forced pull of bad bytes leaves the good install in place
        pull(make_entry(wd14_files, onnx={"sha256": "f" * 64}), models_dir, source, force=True)
    assert Manifest.load(models_dir / "tagger" / NAME) == first.manifest
    assert (models_dir / "tagger" / NAME / "model.onnx").read_bytes() == wd14_files["model.onnx"]

    forced = pull(make_entry(wd14_files), models_dir, source, force=True)
    assert not forced.already_installed and len(hub.requests) > requests_after_first + 2
    assert sorted(p.name for p in (models_dir / "tagger").iterdir()) == [NAME]
    assert not (models_dir / STAGING_DIR).exists()


def test_a_folder_without_manifest_is_not_overwritten_silently(
    hub: StandInHub, wd14_files: dict[str, bytes], tmp_path: Path
) -> None:
    serve_all(hub, wd14_files)
    models_dir = tmp_path / "models"
    mine = models_dir / "tagger" / NAME
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("copied by hand, half done")
    with pytest.raises(PullError, match=r"holds no manifest\.json"):
        pull(make_entry(wd14_files), models_dir, HubSource(hub.endpoint))
    assert (mine / "notes.txt").is_file() and hub.requests == []
    pull(make_entry(wd14_files), models_dir, HubSource(hub.endpoint), force=True)
    assert not (mine / "notes.txt").exists() and (mine / "manifest.json").is_file()


def test_a_malformed_endpoint_is_a_clear_error(wd14_files: dict[str, bytes], tmp_path: Path) -> None:
    with pytest.raises(PullError, match=r"cannot use hub address 'huggingface\.co' \(HF_ENDPOINT\)"):
        pull(make_entry(wd14_files), tmp_path / "models", HubSource("huggingface.co"))


def test_unpinned_files_need_allow_unverified(
    hub: StandInHub, wd14_files: dict[str, bytes], tmp_path: Path
) -> None:
    serve_all(hub, wd14_files)
    entry = make_entry(wd14_files, tags={"sha256": None})
    assert [f.filename for f in entry.unverified] == ["selected_tags.csv"]
    with pytest.raises(UnverifiedFiles, match=r"selected_tags\.csv.*--allow-unverified"):
        pull(entry, tmp_path / "models", HubSource(hub.endpoint))
    assert hub.requests == []  # refused before any download

    result = pull(entry, tmp_path / "models", HubSource(hub.endpoint), allow_unverified=True)
    assert result.unverified_digests == {"selected_tags.csv": sha256(wd14_files["selected_tags.csv"])}


def test_install_from_files_copied_by_hand(wd14_files: dict[str, bytes], tmp_path: Path) -> None:
    copied = tmp_path / "copied"
    copied.mkdir()
    (copied / "model.onnx").write_bytes(wd14_files["model.onnx"])
    with pytest.raises(MissingLocalFile, match=rf"selected_tags\.csv is not in .*/resolve/{REVISION}/"):
        pull(make_entry(wd14_files), tmp_path / "models", LocalSource(copied))
    assert not (tmp_path / "models" / "tagger" / NAME).exists()

    (copied / "selected_tags.csv").write_bytes(wd14_files["selected_tags.csv"] + b"extra,row,0,1\n")
    with pytest.raises(DigestMismatch):
        pull(make_entry(wd14_files), tmp_path / "models", LocalSource(copied))

    (copied / "selected_tags.csv").write_bytes(wd14_files["selected_tags.csv"])
    result = pull(make_entry(wd14_files), tmp_path / "models", LocalSource(copied))
    assert result.manifest.sha256["model.onnx"] == sha256(wd14_files["model.onnx"])


def test_http_errors_name_the_file_and_never_the_token(
    hub: StandInHub, wd14_files: dict[str, bytes], tmp_path: Path
) -> None:
    entry = make_entry(wd14_files)
    with pytest.raises(
        HubRefused, match=rf"has no {REPO_ID}/model.onnx at revision {REVISION[:8]} \(HTTP 404\)"
    ):
        pull(entry, tmp_path / "models", HubSource(hub.endpoint))
    hub.status[f"/{REPO_ID}/resolve/{REVISION}/model.onnx"] = 401
    with pytest.raises(HubRefused) as refused:
        pull(entry, tmp_path / "models", HubSource(hub.endpoint, SecretStr(TOKEN)))
    assert "HTTP 401" in str(refused.value) and "HF_TOKEN was not sent to 127.0.0.1" in str(refused.value)
    assert TOKEN not in str(refused.value) and TOKEN not in repr(HubSource(hub.endpoint, SecretStr(TOKEN)))
    assert not (tmp_path / "models" / STAGING_DIR).exists()


# --- the command line ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The CLI's settings read from this test's environment: models in tmp_path, no .env."""
    models_dir = tmp_path / "models"
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("ANIBOT_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("ANIBOT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("COLUMNS", "250")  # rich tables one row per line
    for name in ("HF_ENDPOINT", "HF_TOKEN", "ANIBOT_HF_ENDPOINT", "ANIBOT_HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield models_dir
    get_settings.cache_clear()


def run_cli(*args: str) -> Any:
    from cli.main import app

    return CliRunner().invoke(app, list(args))


def test_cli_offline_is_one_clear_line_and_a_failure(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = run_cli("models", "pull", "wd-vit-tagger-v3")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if "cannot reach" in line]
    assert len(lines) == 1
    assert f"cannot reach 127.0.0.1:{port} (offline?)" in lines[0]
    assert "anibot models build" in lines[0] and "anibot models pull wd-vit-tagger-v3 --from DIR" in lines[0]
    assert "Traceback" not in result.output and TOKEN not in result.output
    assert not (cli_env / "tagger").exists() and not (cli_env / STAGING_DIR).exists()


def test_cli_unknown_name_lists_the_catalogue(cli_env: Path) -> None:
    result = run_cli("models", "pull", "no-such-model")
    assert result.exit_code == 2
    assert "no model named 'no-such-model'" in result.stderr
    for name in Catalogue.load().names:
        assert name in result.stderr


def test_cli_pull_then_list_and_catalog(
    cli_env: Path,
    hub: StandInHub,
    wd14_files: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serve_all(hub, wd14_files)
    catalog_file = tmp_path / "catalog.json"
    catalog_file.write_text(json.dumps({"models": [entry_data(wd14_files)]}))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)

    pulled = run_cli("models", "pull", NAME, "--catalog", str(catalog_file))
    assert pulled.exit_code == 0, pulled.output
    assert (
        f"Installed {NAME} (tagger, wd14-onnx)" in pulled.stderr
        and f"Active tagger: {NAME}." in pulled.stderr
    )
    assert read_active(cli_env) == {"tagger": NAME}

    listed = run_cli("models", "list")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if NAME in line)
    assert "wd14-onnx" in row and "yes" in row
    assert "available to pull" in listed.stdout and "wd-vit-tagger-v3" in listed.stdout

    again = run_cli("models", "pull", NAME, "--catalog", str(catalog_file), "--no-activate")
    assert again.exit_code == 0 and "already installed" in again.stderr

    shown = run_cli("models", "catalog", NAME, "--catalog", str(catalog_file))
    assert shown.exit_code == 0 and sha256(wd14_files["model.onnx"])[:16] in shown.stdout.replace("\n", "")


def test_cli_hash_mismatch_exits_non_zero(
    cli_env: Path,
    hub: StandInHub,
    wd14_files: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub.serve("model.onnx", wd14_files["model.onnx"][:-1] + b"\0")
    hub.serve("selected_tags.csv", wd14_files["selected_tags.csv"])
    catalog_file = tmp_path / "catalog.json"
    catalog_file.write_text(json.dumps({"models": [entry_data(wd14_files)]}))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    result = run_cli("models", "pull", NAME, "--catalog", str(catalog_file))
    assert result.exit_code == 1
    assert f"sha256 mismatch, expected {sha256(wd14_files['model.onnx'])}" in result.stderr
    assert "Traceback" not in result.output
    assert not (cli_env / "tagger" / NAME).exists()


# --- the catalogue ------------------------------------------------------------------------------------------------


def test_builtin_catalogue_is_pinned_and_loadable() -> None:
    raw = json.loads(DEFAULT_CATALOG.read_text(encoding="utf-8"))
    pinned = re.compile(r"^https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/[0-9a-f]{40}/[^?#]+$")
    assert raw["models"], "the catalogue is empty"
    for item in raw["models"]:
        assert item["slot"] in SLOTS
        assert item["format"] in LOADERS, item["name"]
        module = LOADERS[item["format"]].split(":")[0]  # e.g. core.vision.slots.tagger for a tagger format
        assert item["slot"] in module.rsplit(".", 1)[-1], (
            f"{item['name']}: {item['format']} is no {item['slot']}"
        )
        assert set(item["files"]) == ROLES_BY_FORMAT[item["format"]], item["name"]
        assert item["sources"]["files"] and item["licence"] and item["homepage"].startswith("https://")
        for spec in item["files"].values():
            assert pinned.match(spec["url"]), spec["url"]
            assert "/resolve/main/" not in spec["url"]
            assert spec["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", spec["sha256"]), spec
            assert isinstance(spec["size"], int) and spec["size"] > 0

    catalogue = Catalogue.load()
    assert len(set(catalogue.names)) == len(raw["models"])
    for entry in catalogue.entries:
        if entry.unverified:  # a file without a published digest is only ever installed with the flag

            class Untouchable:
                def open(self, file: object) -> Any:
                    raise AssertionError("an unverified entry must be refused before any download")

            with pytest.raises(UnverifiedFiles):
                pull(entry, Path("/nonexistent"), Untouchable())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"files": {"onnx": {"url": f"https://huggingface.co/{REPO_ID}/resolve/main/model.onnx"}}},
            "not pinned",
        ),
        ({"files": {"onnx": {"url": "https://example.com/model.onnx"}}}, "not pinned"),
        ({"files": {"onnx": {"sha256": "ABC"}}}, "sha256 must be 64"),
        ({"format": "pickle-of-doom"}, "unknown format"),
        ({"slot": "oracle"}, "unknown slot"),
        ({"name": "../escape"}, "folder name"),
        ({"colour": "blue"}, "unknown key"),
    ],
)
def test_malformed_catalogue_entries_fail_loudly(change: dict[str, Any], message: str) -> None:
    data = entry_data({"model.onnx": b"x", "selected_tags.csv": b"y"})
    for key, value in change.items():
        if key == "files":
            for role, fields in value.items():
                data["files"][role].update(fields)
        else:
            data[key] = value
    with pytest.raises(CatalogError, match=message):
        Catalogue.from_dict({"models": [data]})


def test_pull_and_catalogue_import_no_model_runtime() -> None:
    heavy = ("torch", "onnxruntime", "ultralytics", "timm", "transformers")
    code = (
        "import sys, core.vision.slots.pull, core.vision.slots.catalog, cli.models_cmd; "
        f"loaded = sorted(m for m in {heavy!r} if m in sys.modules); "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_settings_read_hf_endpoint_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    settings = Settings(_env_file=None)
    source = HubSource.from_settings(settings)
    assert source.endpoint == "https://hf-mirror.example" and source.host == "hf-mirror.example"
    assert TOKEN not in repr(settings) and TOKEN not in repr(source)
