"""Numbers typed by users (chat arguments, button payloads, API fields): ASCII digits only.

``"²".isdigit()`` is true but ``int("²")`` fails, and ``int("٣")`` is 3: neither is a number we asked for.
"""

from __future__ import annotations

import re

_ASCII_NUMBER = re.compile(r"[0-9]{1,9}")


def ascii_int(text: str) -> int | None:
    """``text`` (spaces around allowed) as a non-negative int when it is 1-9 ASCII digits, else None."""
    stripped = text.strip()
    return int(stripped) if _ASCII_NUMBER.fullmatch(stripped) else None


def ascii_int_in(text: str, low: int, high: int) -> int | None:
    """:func:`ascii_int`, and None as well when outside ``low``-``high``."""
    value = ascii_int(text)
    return value if value is not None and low <= value <= high else None
