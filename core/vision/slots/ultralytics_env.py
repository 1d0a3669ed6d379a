"""Make ultralytics work with no network: call :func:`ultralytics_offline` before importing it.

ultralytics reads its switches from the environment when it is first imported, and ``train()`` looks for the
fonts ``Arial.ttf`` / ``Arial.Unicode.ttf`` in its config folder (downloading them when missing, with a network
call that no flag disables). See ``/work/shared/OFFLINE.md``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

# Latin font first, then a CJK-capable one (ultralytics draws non-ASCII labels with Arial.Unicode.ttf).
_LATIN_FONTS = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
)
_UNICODE_FONTS = (
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
)


def _matplotlib_font() -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return path if path.is_file() else None


def _first_font(candidates: tuple[Path, ...]) -> Path | None:
    for path in candidates:
        if path.is_file():
            return path
    return _matplotlib_font()


def _place_font(target: Path, candidates: tuple[Path, ...]) -> None:
    if target.is_file() and target.stat().st_size > 0:
        return
    source = _first_font(candidates)
    if source is None:
        raise FileNotFoundError(
            f"no TTF font found to place at {target}; install fonts-dejavu-core or matplotlib"
        )
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)  # atomic: concurrent callers never see a half-written font


def default_config_dir() -> Path:
    """Where ultralytics' settings and fonts go when the caller names no folder."""
    return Path(tempfile.gettempdir()) / "anibot-ultralytics"


def ultralytics_offline(config_dir: Path) -> None:
    """Switch ultralytics to offline mode with ``config_dir`` as its settings folder (idempotent).

    Sets ``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=False`` and ``YOLO_CONFIG_DIR``, places the two fonts there and
    turns settings ``sync`` off. When ultralytics was already imported its config folder is fixed: the fonts then
    go to the folder it actually uses, and its import-time switches are patched.
    """
    config_dir = Path(config_dir).expanduser().resolve()
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    # its per-batch progress bars would interleave with `anibot models build`'s own (YOLO_VERBOSE=True restores)
    os.environ.setdefault("YOLO_VERBOSE", "False")
    imported_before = "ultralytics" in sys.modules
    if not imported_before:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    folders = {config_dir}

    import ultralytics.utils
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    if imported_before:  # module constants read from the environment at import time
        ultralytics.utils.ONLINE = False
        ultralytics.utils.AUTOINSTALL = False
        checks = sys.modules.get("ultralytics.utils.checks")
        if checks is not None:
            checks.AUTOINSTALL = False  # type: ignore[attr-defined]
    folders.add(Path(USER_CONFIG_DIR))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        _place_font(folder / "Arial.ttf", _LATIN_FONTS)
        _place_font(folder / "Arial.Unicode.ttf", _UNICODE_FONTS)
    if SETTINGS.get("sync", True):
        SETTINGS.update({"sync": False})
    restore_pillow_open()


def restore_pillow_open() -> None:
    """Undo ultralytics' replacement of ``PIL.Image.open`` (applied once, when ``ultralytics.utils.patches`` is
    imported). Its wrapper tries to install and register a HEIF plugin whenever Pillow cannot identify a file;
    image intake must answer "not an image" instead, with no install attempt, in every process."""
    import ultralytics.utils.patches as patches
    from PIL import Image

    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is not original:
        Image.open = original
