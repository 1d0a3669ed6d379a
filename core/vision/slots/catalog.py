"""The catalogue of community models that ``anibot models pull`` installs, read and checked from ``catalog.json``.

The data lives in :data:`DEFAULT_CATALOG` (JSON, shipped with the package) so that a mirror or a user can point
``--catalog`` at a file of their own in the same format. Each entry names a slot, the manifest format that loads
it (a key of :data:`core.vision.slots.registry.LOADERS`) and its files, each pinned to a Hugging Face commit
(``https://huggingface.co/<owner>/<repo>/resolve/<40-hex revision>/<path>``), with the sha256 and size its bytes
must have. A ``sha256`` of ``null`` marks a file no public digest exists for: pulling it needs an explicit
``--allow-unverified``. Loading the catalogue imports neither torch nor ONNX Runtime.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from core.vision.slots.base import Manifest
from core.vision.slots.registry import LOADERS, SLOTS

DEFAULT_CATALOG = Path(__file__).with_name("catalog.json")
HUB = "https://huggingface.co"

PINNED_URL = re.compile(
    r"^https://huggingface\.co/(?P<repo>[\w.-]+/[\w.-]+)/resolve/(?P<revision>[0-9a-f]{40})/(?P<path>[^?#]+)$"
)
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # becomes a folder name under models/<slot>/

ENTRY_KEYS = {
    "name",
    "slot",
    "format",
    "summary",
    "licence",
    "homepage",
    "files",
    "thresholds",
    "input_size",
    "extra",
    "scores",
    "sources",
}
REQUIRED_ENTRY_KEYS = {"name", "slot", "format", "licence", "homepage", "files", "sources"}
FILE_KEYS = {"url", "sha256", "size"}


class CatalogError(ValueError):
    """The catalogue file is malformed (the message says where)."""


class UnknownModel(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no model named {name!r} in the catalogue; known: {', '.join(known)}")
        self.name = name
        self.known = known


@dataclass(frozen=True)
class RemoteFile:
    """One file of a catalogue entry, at a pinned revision of a Hugging Face repository."""

    role: str  # the manifest role the slot's loader asks for ("onnx", "tags", ...)
    repo: str  # "owner/name"
    revision: str  # 40-hex commit
    path: str  # path inside the repository
    sha256: str | None  # None: no published digest (pull needs --allow-unverified)
    size: int | None

    @property
    def filename(self) -> str:
        """The file's name in the installed model folder."""
        return PurePosixPath(self.path).name

    @property
    def pinned_url(self) -> str:
        return self.url(HUB)

    def url(self, endpoint: str) -> str:
        """The download URL under ``endpoint`` (huggingface.co or a mirror with the same layout)."""
        return f"{endpoint.rstrip('/')}/{self.repo}/resolve/{self.revision}/{quote(self.path)}"

    @classmethod
    def parse(cls, role: str, data: Any, where: str) -> RemoteFile:
        if not isinstance(data, dict):
            raise CatalogError(f"{where}: expected an object with url, sha256 and size")
        unknown = sorted(set(data) - FILE_KEYS)
        if unknown:
            raise CatalogError(
                f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(FILE_KEYS)})"
            )
        match = PINNED_URL.match(str(data.get("url", "")))
        if match is None:
            raise CatalogError(
                f"{where}: url {data.get('url')!r} is not pinned; expected "
                "https://huggingface.co/<owner>/<repo>/resolve/<40-hex revision>/<path>"
            )
        sha256 = data.get("sha256")
        if sha256 is not None and not (isinstance(sha256, str) and SHA256_HEX.match(sha256)):
            raise CatalogError(f"{where}: sha256 must be 64 lowercase hex digits or null, got {sha256!r}")
        size = data.get("size")
        if size is not None and not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
            raise CatalogError(f"{where}: size must be a positive integer or null, got {size!r}")
        return cls(
            role=role,
            repo=match["repo"],
            revision=match["revision"],
            path=match["path"],
            sha256=sha256,
            size=size,
        )


@dataclass(frozen=True)
class CatalogEntry:
    """A community model: what slot and format it is, its pinned files, and how to use it."""

    name: str
    slot: str
    format: str
    summary: str
    licence: str
    homepage: str
    files: tuple[RemoteFile, ...]
    thresholds: dict[str, float]
    input_size: int | None
    extra: dict[str, Any]
    sources: dict[str, str]  # what was pinned -> where it was read
    scores: dict[str, float] = field(default_factory=dict)  # published validation figures (sources["scores"])

    @property
    def total_size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    @property
    def unverified(self) -> tuple[RemoteFile, ...]:
        return tuple(f for f in self.files if f.sha256 is None)

    @property
    def provenance(self) -> str:
        revisions = sorted({f"{f.repo}@{f.revision[:8]}" for f in self.files})
        return f"{', '.join(revisions)} ({self.licence}), installed by `anibot models pull {self.name}`"

    def manifest(self, folder: Path, digests: dict[str, str]) -> Manifest:
        """The manifest of this model installed in ``folder``, given each file's sha256 (by file name)."""
        return Manifest(
            slot=self.slot,
            name=self.name,
            format=self.format,
            files={f.role: f.filename for f in self.files},
            sha256={f.filename: digests[f.filename] for f in self.files},
            thresholds=dict(self.thresholds),
            input_size=self.input_size,
            provenance=self.provenance,
            extra={
                **self.extra,
                "source": {
                    "homepage": self.homepage,
                    "licence": self.licence,
                    "urls": {f.role: f.pinned_url for f in self.files},
                    "pinned_from": dict(self.sources),
                },
            },
            folder=folder,
        )

    @classmethod
    def parse(cls, data: Any, where: str) -> CatalogEntry:
        if not isinstance(data, dict):
            raise CatalogError(f"{where}: expected an object")
        unknown = sorted(set(data) - ENTRY_KEYS)
        if unknown:
            raise CatalogError(
                f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(ENTRY_KEYS))})"
            )
        missing = sorted(REQUIRED_ENTRY_KEYS - set(data))
        if missing:
            raise CatalogError(f"{where}: missing key(s) {', '.join(missing)}")
        name = str(data["name"])
        where = f"{where} ({name})"
        if not MODEL_NAME.match(name):
            raise CatalogError(f"{where}: a name is a folder name: letters, digits, '.', '_' and '-'")
        if data["slot"] not in SLOTS:
            raise CatalogError(f"{where}: unknown slot {data['slot']!r} (slots: {', '.join(SLOTS)})")
        if data["format"] not in LOADERS:
            raise CatalogError(
                f"{where}: unknown format {data['format']!r} (known: {', '.join(sorted(LOADERS))})"
            )
        if not isinstance(data["files"], dict) or not data["files"]:
            raise CatalogError(f"{where}: files must map each role to a file")
        files = tuple(
            RemoteFile.parse(role, spec, f"{where} files.{role}") for role, spec in data["files"].items()
        )
        names = [f.filename for f in files]
        if len(set(names)) != len(names):
            raise CatalogError(f"{where}: two files would have the same name in the model folder: {names}")
        thresholds = data.get("thresholds") or {}
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in thresholds.values()):
            raise CatalogError(f"{where}: thresholds must be numbers")
        input_size = data.get("input_size")
        if input_size is not None and not (isinstance(input_size, int) and input_size > 0):
            raise CatalogError(f"{where}: input_size must be a positive integer or null")
        sources = data["sources"]
        if not isinstance(sources, dict) or not sources.get("files"):
            raise CatalogError(f"{where}: sources.files must say where the revisions and digests were read")
        scores = data.get("scores") or {}
        if not isinstance(scores, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in scores.values()
        ):
            raise CatalogError(f"{where}: scores must map a metric name to a number from 0 to 1")
        if scores and not sources.get("scores"):
            raise CatalogError(f"{where}: sources.scores must say where the published scores were read")
        return cls(
            name=name,
            slot=data["slot"],
            format=data["format"],
            summary=str(data.get("summary", "")),
            licence=str(data["licence"]),
            homepage=str(data["homepage"]),
            files=files,
            thresholds={k: float(v) for k, v in thresholds.items()},
            input_size=input_size,
            extra=dict(data.get("extra") or {}),
            sources={k: str(v) for k, v in sources.items()},
            scores={str(k): float(v) for k, v in scores.items()},
        )


@dataclass(frozen=True)
class Catalogue:
    entries: tuple[CatalogEntry, ...]

    @classmethod
    def load(cls, path: Path = DEFAULT_CATALOG) -> Catalogue:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CatalogError(f"cannot read the model catalogue {path}: {exc}") from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "catalogue") -> Catalogue:
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            raise CatalogError(f"{where}: expected an object with a 'models' list")
        entries = tuple(
            CatalogEntry.parse(item, f"{where} models[{i}]") for i, item in enumerate(data["models"])
        )
        names = [e.name for e in entries]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise CatalogError(f"{where}: duplicate model name(s) {', '.join(duplicates)}")
        return cls(entries)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def get(self, name: str) -> CatalogEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise UnknownModel(name, self.names)
