"""Character names as admins and users type them: validated and normalised in one place."""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_CHARS = 100
# letters and digits of any script, spaces and the punctuation real names use (Hoshino Ai, Rem (Re:Zero) is a
# name plus a series, K-On!, Asuna Yūki, 初音ミク, Jean-Luc, O'Brien, Mr. Satan, Rin·Tohsaka)
_ALLOWED = re.compile(r"^[\w .,'’!?:·&+-]+$", re.UNICODE)


class BadName(ValueError):
    """The text cannot be a character or series name; the message is safe to show a user."""


def normalise_name(text: str, *, what: str = "name") -> str:
    """NFKC (full-width "Ｒｅｍ" is "Rem", one character), whitespace collapsed; raises :class:`BadName` for
    empty, too long, path-like or odd names."""
    name = " ".join(unicodedata.normalize("NFKC", text).split())
    if not name:
        raise BadName(f"The {what} is empty.")
    if len(name) > MAX_NAME_CHARS:
        raise BadName(f"The {what} is longer than {MAX_NAME_CHARS} characters.")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise BadName(f"The {what} may not look like a path.")
    if not _ALLOWED.fullmatch(name) or "_" in name:
        raise BadName(f"The {what} may only hold letters, digits, spaces and . , ' ! ? : · & + -")
    return name


def split_name_and_series(text: str) -> tuple[str, str]:
    """``Name | Series`` or ``Name (Series)`` -> (name, series); both normalised; series may be ''."""
    text = unicodedata.normalize("NFKC", text).strip()  # full-width ｜ and （） separate too
    if "|" in text:
        name, _, series = text.partition("|")
    else:
        match = re.fullmatch(r"(.+?)\s*\(([^()]+)\)", text)
        name, series = (match.group(1), match.group(2)) if match else (text, "")
    return normalise_name(name), normalise_name(series, what="series") if series.strip() else ""
