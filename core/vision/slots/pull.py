"""Install a catalogue model: fetch its pinned files, check every byte, and move the folder into place at once.

``pull`` streams each file into a staging folder under ``models/.staging/`` while hashing it, refuses a file
whose sha256 or size differs from the catalogue's (the partial model is deleted), writes the manifest, and only
then renames the folder to ``models/<slot>/<name>/``: a model folder is either complete and verified, or absent.

Files come from a :class:`HubSource` (Hugging Face or a mirror with the same URL layout, ``HF_ENDPOINT``; a
``HF_TOKEN`` is sent to that host only, never logged) or from a :class:`LocalSource` (files copied by hand,
checked the same way). Failures a user can act on raise :class:`PullError` with a one-line message.
No torch or ONNX Runtime here.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import socket
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from pydantic import SecretStr

from core.settings import Settings
from core.vision.slots.base import MANIFEST_NAME, Manifest
from core.vision.slots.catalog import HUB, CatalogEntry, RemoteFile
from core.vision.slots.registry import set_active

log = logging.getLogger(__name__)
TOKEN_HOSTS = frozenset(
    {"huggingface.co"}
)  # where HF_TOKEN may go (over https), besides ANIBOT_HF_TOKEN_HOSTS

CHUNK_BYTES = 1 << 20
STAGING_DIR = ".staging"  # under the models folder: same filesystem, so the final rename is atomic
USER_AGENT = "anibot-models-pull/1"

# (file, bytes written so far, expected total or None)
ProgressFn = Callable[[RemoteFile, int, int | None], None]


class PullError(RuntimeError):
    """A pull failed for a reason the user can act on; ``str()`` is a one-line message for them."""


class HubUnreachable(PullError):
    """No answer from the hub: offline, DNS failure, connection refused or reset, timeout, TLS failure."""


class HubRefused(PullError):
    """The hub answered with an HTTP error."""


class DigestMismatch(PullError):
    """The bytes received are not the pinned ones (sha256 or size)."""


class UnverifiedFiles(PullError):
    """The entry has files without a pinned sha256 and ``allow_unverified`` was not given."""


class MissingLocalFile(PullError):
    """A file to install from a local folder is not there."""


def offline_hint(name: str) -> str:
    return (
        "Use `anibot models build` to train the starter models offline, or download the files listed by "
        f"`anibot models catalog {name}` on a machine with internet and run `anibot models pull {name} --from DIR`."
    )


class FileSource(Protocol):
    def open(self, file: RemoteFile) -> AbstractContextManager[tuple[Iterator[bytes], int | None]]:
        """Chunks of the file's bytes and their total length when known."""
        ...

    def describe(self, file: RemoteFile) -> str:
        """Where the file is read from, for messages."""
        ...


@dataclass(frozen=True)
class HubSource:
    """Hugging Face (or a mirror with its URL layout): ``<endpoint>/<repo>/resolve/<revision>/<path>``."""

    endpoint: str = HUB
    token: SecretStr | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    name: str = ""  # the catalogue entry, for the offline hint
    token_hosts: frozenset[str] = TOKEN_HOSTS  # hosts the token may be sent to, over https only

    @classmethod
    def from_settings(cls, settings: Settings, name: str = "") -> HubSource:
        hosts = TOKEN_HOSTS | {h.strip().lower() for h in settings.hf_token_hosts.split(",") if h.strip()}
        return cls(
            settings.hf_endpoint, settings.hf_token, settings.download_timeout_s, name, frozenset(hosts)
        )

    @property
    def sends_token(self) -> bool:
        """Whether the token goes with the requests: only over https, only to a host named as trusted (a mirror
        in HF_ENDPOINT gets no token unless ANIBOT_HF_TOKEN_HOSTS names it)."""
        if self.token is None or not self.token.get_secret_value():
            return False
        parts = urlsplit(self.endpoint)
        return parts.scheme == "https" and (parts.hostname or "").lower() in self.token_hosts

    def request(self, file: RemoteFile) -> urllib.request.Request:
        """The request for ``file``; the token, when sent, as an unredirected header: it goes to the hub only,
        never to the storage host the hub redirects to."""
        request = urllib.request.Request(file.url(self.endpoint), headers={"User-Agent": USER_AGENT})
        if self.sends_token:
            assert self.token is not None
            request.add_unredirected_header("Authorization", f"Bearer {self.token.get_secret_value()}")
        elif self.token is not None and self.token.get_secret_value():
            log.warning(
                "HF_TOKEN not sent to %s: only over https to huggingface.co or a host in ANIBOT_HF_TOKEN_HOSTS",
                self.host,
            )
        return request

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).netloc or self.endpoint

    def describe(self, file: RemoteFile) -> str:
        return file.url(self.endpoint)

    @contextmanager
    def open(self, file: RemoteFile) -> Iterator[tuple[Iterator[bytes], int | None]]:
        try:
            request = self.request(file)
        except ValueError as exc:  # not a URL urllib can open: a malformed HF_ENDPOINT
            raise HubUnreachable(f"cannot use hub address {self.endpoint!r} (HF_ENDPOINT): {exc}") from None
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise HubRefused(self._http_message(exc.code, exc.reason, file)) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise HubUnreachable(self._unreachable_message(exc)) from None
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            yield self._chunks(response), total

    def _chunks(self, response: http.client.HTTPResponse) -> Iterator[bytes]:
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as exc:
                raise HubUnreachable(f"the download from {self.host} broke off: {_reason(exc)}") from None
            if not chunk:
                return
            yield chunk

    def _unreachable_message(self, exc: BaseException) -> str:
        return f"cannot reach {self.host} (offline?): {_reason(exc)}. {offline_hint(self.name or 'NAME')}"

    def _http_message(self, code: int, reason: str, file: RemoteFile) -> str:
        what = f"{file.repo}/{file.path} at revision {file.revision[:8]}"
        if code in (401, 403):
            if self.sends_token:
                fix = "the token in HF_TOKEN was refused"
            elif self.token is not None and self.token.get_secret_value():
                fix = (
                    f"HF_TOKEN was not sent to {self.host}: it goes only over https, to huggingface.co or a host "
                    "named in ANIBOT_HF_TOKEN_HOSTS"
                )
            else:
                fix = f"the model may be gated: accept its terms on https://huggingface.co/{file.repo} and set HF_TOKEN"
            return f"{self.host} refused {what} (HTTP {code} {reason}): {fix}"
        if code == 404:
            return (
                f"{self.host} has no {what} (HTTP 404): the revision may have been removed, "
                "or the mirror in HF_ENDPOINT does not hold it"
            )
        return f"{self.host} answered HTTP {code} {reason} for {what}"


@dataclass(frozen=True)
class LocalSource:
    """Files copied by hand into a folder, found by their repository path or by their file name."""

    folder: Path

    def _find(self, file: RemoteFile) -> Path:
        for candidate in (self.folder / file.path, self.folder / file.filename):
            if candidate.is_file():
                return candidate
        raise MissingLocalFile(
            f"{file.filename} is not in {self.folder} (looked for {file.path} and {file.filename}); "
            f"download it from {file.pinned_url}"
        )

    def describe(self, file: RemoteFile) -> str:
        return str(self._find(file))

    @contextmanager
    def open(self, file: RemoteFile) -> Iterator[tuple[Iterator[bytes], int | None]]:
        path = self._find(file)
        with path.open("rb") as handle:
            yield iter(lambda: handle.read(CHUNK_BYTES), b""), path.stat().st_size


def _reason(exc: BaseException) -> str:
    """The innermost useful reason of a network error, on one line."""
    reason: object = exc
    while isinstance(reason, urllib.error.URLError) and not isinstance(reason, urllib.error.HTTPError):
        reason = reason.reason
    if isinstance(reason, socket.gaierror):
        return f"name resolution failed ({reason.strerror or reason})"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed ({reason.reason or reason})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return " ".join(str(reason).split()) or type(reason).__name__


def probe_hub(endpoint: str, timeout_s: float) -> str | None:
    """``None`` when the hub at ``endpoint`` answers within ``timeout_s`` (any HTTP status counts: it is there),
    else why not, on one line. One HEAD request, proxies honoured as for downloads; no token is sent."""
    try:
        request = urllib.request.Request(endpoint, method="HEAD", headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as exc:
        exc.close()
        return None
    except ValueError as exc:  # not a URL urllib can open: a malformed HF_ENDPOINT
        return f"cannot use hub address {endpoint!r} (HF_ENDPOINT): {exc}"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        host = urlsplit(endpoint).netloc or endpoint
        return f"cannot reach {host}: {_reason(exc)}"


def fetch_verified(
    source: FileSource, file: RemoteFile, target: Path, progress: ProgressFn | None = None
) -> str:
    """Stream ``file`` from ``source`` into ``target`` while hashing it; its sha256.

    Raises :class:`DigestMismatch` (and deletes ``target``) when the size or the pinned sha256 differ.
    """
    digest = hashlib.sha256()
    done = 0
    try:
        with source.open(file) as (chunks, length), target.open("wb") as out:
            total = file.size if file.size is not None else length
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if file.size is not None and done > file.size:
                    raise DigestMismatch(
                        f"{file.filename}: more than the pinned {file.size} bytes from {source.describe(file)}; "
                        "refused and deleted"
                    )
                if progress is not None:
                    progress(file, done, total)
        got = digest.hexdigest()
        if file.size is not None and done != file.size:
            raise DigestMismatch(
                f"{file.filename}: expected {file.size} bytes, got {done} from {source.describe(file)}; "
                "refused and deleted"
            )
        if file.sha256 is not None and got != file.sha256:
            raise DigestMismatch(
                f"{file.filename}: sha256 mismatch, expected {file.sha256}, got {got} "
                f"from {source.describe(file)}; refused and deleted"
            )
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return got


@dataclass(frozen=True)
class PullResult:
    manifest: Manifest
    activated: bool
    already_installed: bool
    unverified_digests: dict[str, str]  # file name -> sha256 computed, for files the catalogue does not pin


def installed_folder(models_dir: Path, entry: CatalogEntry) -> Path:
    return models_dir / entry.slot / entry.name


def pull(
    entry: CatalogEntry,
    models_dir: Path,
    source: FileSource,
    *,
    activate: bool = True,
    force: bool = False,
    allow_unverified: bool = False,
    progress: ProgressFn | None = None,
) -> PullResult:
    """Install ``entry`` into ``models/<slot>/<name>/`` from ``source`` (see the module docstring)."""
    if entry.unverified and not allow_unverified:
        names = ", ".join(f.filename for f in entry.unverified)
        raise UnverifiedFiles(
            f"{entry.name}: no published sha256 for {names}; nothing was downloaded. "
            "Pass --allow-unverified to install it anyway (the digest computed is printed so you can pin it)"
        )
    target = installed_folder(models_dir, entry)
    if (target / MANIFEST_NAME).is_file() and not force:
        if activate:
            set_active(models_dir, entry.slot, entry.name)
        return PullResult(Manifest.load(target), activate, already_installed=True, unverified_digests={})
    if target.exists() and not force:
        raise PullError(
            f"{target} exists but holds no {MANIFEST_NAME}; move it away, or pass --force to replace it"
        )

    staging_root = models_dir / STAGING_DIR
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{entry.name}-", dir=staging_root))
    try:
        digests = {f.filename: fetch_verified(source, f, staging / f.filename, progress) for f in entry.files}
        entry.manifest(staging, digests).save()
        _move_into_place(staging, target, staging_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(staging_root)
    if activate:
        set_active(models_dir, entry.slot, entry.name)
    unverified = {f.filename: digests[f.filename] for f in entry.unverified}
    return PullResult(Manifest.load(target), activate, already_installed=False, unverified_digests=unverified)


def _move_into_place(staging: Path, target: Path, staging_root: Path) -> None:
    """Rename the complete ``staging`` folder to ``target``, replacing (and then deleting) an older install."""
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = None
    if target.exists():
        previous = Path(tempfile.mkdtemp(prefix=f"{target.name}-replaced-", dir=staging_root))
        previous.rmdir()
        target.rename(previous)
    try:
        staging.rename(target)
    except OSError:
        if previous is not None:
            previous.rename(target)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):
        folder.rmdir()
