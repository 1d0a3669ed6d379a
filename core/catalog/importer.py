"""Catalogue import from the public MyAnimeList-derived CSV files into the store.

Layouts, recognised from the header (``layout="auto"``) or named:

- ``2023``: "Anime Dataset 2023" (``anime-dataset-2023.csv``): ``anime_id, Name, English name, Other name, Score,
  Genres, Synopsis, Type, Episodes, Aired, Premiered, Status, Producers, Licensors, Studios, Source, Duration,
  Rating, Rank, Popularity, Favorites, Scored By, Members, Image URL``; missing values are ``UNKNOWN``.
- ``2020``: the 2020 "anime recommendation database" ``anime.csv``: ``MAL_ID, Name, Score, Genres, English name,
  Japanese name, Type, Episodes, Aired, Premiered, Producers, Licensors, Studios, Source, Duration, Rating, ...,
  Members, ...``; missing values are ``Unknown``.
- ``2020-synopsis``: the same database's ``anime_with_synopsis.csv``: ``MAL_ID, Name, Score, Genres, synopsis``
  (the original file spells it ``sypnopsis``).

Importing is idempotent: rows are upserted by MyAnimeList id, a re-import updates them. An id given twice in
one file keeps its last row (counted in ``duplicates``); rows without a usable id or name are skipped.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from core.storage.store import AnimeRecord

if TYPE_CHECKING:
    from core.storage.store import Store

Layout = Literal["2023", "2020", "2020-synopsis"]
LAYOUTS: tuple[str, ...] = ("auto", "2023", "2020", "2020-synopsis")
ProgressFn = Callable[[int, int], None]  # (rows done, rows in all)
BATCH = 500

MISSING = {"", "unknown", "n/a", "na", "nan", "none", "null", "-", "?"}
DEMOGRAPHICS = ("Shounen", "Shoujo", "Seinen", "Josei", "Kids")
GENRES = {  # MyAnimeList genres (2023); every other entry of a 2020 Genres list is a theme
    "Action", "Adventure", "Avant Garde", "Award Winning", "Boys Love", "Comedy", "Drama", "Fantasy",
    "Girls Love", "Gourmet", "Horror", "Mystery", "Romance", "Sci-Fi", "Slice of Life", "Sports",
    "Supernatural", "Suspense", "Ecchi", "Erotica", "Hentai",
}  # fmt: skip
RENAMED = {  # 2020 genre names -> today's MyAnimeList names
    "Thriller": "Suspense", "Dementia": "Avant Garde", "Shounen Ai": "Boys Love", "Shoujo Ai": "Girls Love",
    "Yaoi": "Boys Love", "Yuri": "Girls Love", "Sports ": "Sports",
}  # fmt: skip
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]")
_YEAR = re.compile(r"\b(19[0-9]{2}|20[0-9]{2})\b")
_HOURS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:hr|hour)")
_MINUTES = re.compile(r"(\d+(?:\.\d+)?)\s*min")
_SECONDS = re.compile(r"(\d+(?:\.\d+)?)\s*sec")


class CatalogueError(ValueError):
    """The file is not a catalogue this importer reads."""


@dataclass
class ImportReport:
    path: str
    layout: str
    rows: int = 0  # data rows read
    imported: int = 0  # distinct titles written
    duplicates: int = 0  # rows whose id appeared earlier in the file (the last one wins)
    skipped: list[str] = field(default_factory=list)  # "line 12: no MAL id"

    def summary(self) -> str:
        text = f"{self.imported} titles imported from {self.path} ({self.layout} layout, {self.rows} rows"
        if self.duplicates:
            text += f", {self.duplicates} duplicate ids: last row kept"
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        return text + ")"


def detect_layout(header: Iterable[str]) -> Layout:
    columns = {c.strip().lower() for c in header}
    if {"anime_id", "name", "other name"} <= columns:
        return "2023"
    if {"mal_id", "name"} <= columns and ({"synopsis", "sypnopsis"} & columns) and "type" not in columns:
        return "2020-synopsis"
    if {"mal_id", "name", "genres"} <= columns:
        return "2020"
    raise CatalogueError(
        "not a catalogue this importer reads: expected the Anime Dataset 2023 columns (anime_id, Name, "
        "Other name, ...) or the 2020 database's anime.csv / anime_with_synopsis.csv (MAL_ID, Name, Genres, ...); "
        f"got {', '.join(list(header)[:8])}"
    )


def read_catalogue(path: Path, layout: str = "auto") -> tuple[Layout, list[tuple[int, AnimeRecord | str]]]:
    """``(layout, [(line number, record or why it was skipped)])`` from a CSV file."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(encoding="utf-8-sig", newline="") as f:
        return parse_rows(csv.DictReader(f), layout)


def parse_rows(
    reader: csv.DictReader[str], layout: str = "auto"
) -> tuple[Layout, list[tuple[int, AnimeRecord | str]]]:
    if reader.fieldnames is None:
        raise CatalogueError("empty file: no header row")
    chosen: Layout = detect_layout(reader.fieldnames) if layout == "auto" else layout  # type: ignore[assignment]
    if chosen not in LAYOUTS[1:]:
        raise CatalogueError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
    parse = {"2023": _from_2023, "2020": _from_2020, "2020-synopsis": _from_2020}[chosen]
    out: list[tuple[int, AnimeRecord | str]] = []
    for row in reader:
        clean = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if isinstance(v, str)}
        if not any(clean.values()):
            continue
        out.append((reader.line_num, parse(clean)))
    return chosen, out


def import_catalogue(
    store: Store,
    path: Path,
    *,
    layout: str = "auto",
    progress: ProgressFn | None = None,
) -> ImportReport:
    """Read ``path`` and upsert its titles into ``store`` (embeddings are computed by ``CatalogService``)."""
    chosen, parsed = read_catalogue(path, layout)
    report = ImportReport(str(path), chosen, rows=len(parsed))
    records: dict[int, AnimeRecord] = {}
    for line, item in parsed:
        if isinstance(item, str):
            report.skipped.append(f"line {line}: {item}")
            continue
        assert item.mal_id is not None
        if item.mal_id in records:
            report.duplicates += 1
            del records[item.mal_id]  # re-inserted below: the file order is kept, the last row wins
        records[item.mal_id] = item
    rows = list(records.values())
    for start, batch in _batches(rows):
        store.upsert_anime(batch)
        if progress is not None:
            progress(start + len(batch), len(rows))
    report.imported = len(rows)
    return report


def _batches(rows: list[AnimeRecord]) -> Iterator[tuple[int, list[AnimeRecord]]]:
    for start in range(0, len(rows), BATCH):
        yield start, rows[start : start + BATCH]


# --- one row -------------------------------------------------------------------------------------------------


def _from_2023(row: dict[str, str]) -> AnimeRecord | str:
    other = _text(row.get("other name"))
    japanese = other if _CJK.search(other) else ""
    others = [] if japanese else [other]
    return _record(row, "anime_id", japanese=japanese, others=others, members=row.get("members"))


def _from_2020(row: dict[str, str]) -> AnimeRecord | str:
    return _record(
        row, "mal_id", japanese=_text(row.get("japanese name")), others=[], members=row.get("members")
    )


def _record(row: dict[str, str], id_column: str, *, japanese: str, others: list[str], members: str | None):
    mal_id = _int(row.get(id_column))
    title = _text(row.get("name"))
    if mal_id is None:
        return f"no MyAnimeList id ({id_column}={row.get(id_column, '')!r})"
    if not title:
        return "no name"
    genres, themes, demographic = split_genres(_list(row.get("genres")))
    others += [s for s in (x.strip() for x in _text(row.get("synonyms")).split(",")) if s]
    english = _text(row.get("english name"))
    aired = _text(row.get("aired"))
    season = _text(row.get("premiered"))
    year = _year(season) or _year(aired)
    return AnimeRecord(
        mal_id=mal_id,
        title=title,
        english_title="" if english == title else english,
        japanese_title=japanese,
        other_names="\n".join(dict.fromkeys(n for n in others if n and n not in (title, english, japanese))),
        genres=",".join(genres),
        themes=",".join(themes),
        demographic=demographic,
        synopsis=_synopsis(row.get("synopsis") or row.get("sypnopsis")),
        score=_float(row.get("score")),
        kind=_text(row.get("type")),
        year=year,
        studios=",".join(_list(row.get("studios"))),
        producers=",".join(_list(row.get("producers"))),
        source=_text(row.get("source")),
        episodes=_int(row.get("episodes")),
        duration_min=parse_duration(_text(row.get("duration"))),
        aired=aired,
        season=season,
        status=_text(row.get("status")),
        rating=_text(row.get("rating")),
        members=_int(members),
        image_url=_text(row.get("image url")),
    )


def split_genres(names: Iterable[str]) -> tuple[list[str], list[str], str]:
    """A MyAnimeList Genres list -> (genres, themes, demographic): the 2020 lists mix all three."""
    genres: list[str] = []
    themes: list[str] = []
    demographic = ""
    for raw in names:
        name = RENAMED.get(raw, raw)
        if name in DEMOGRAPHICS:
            demographic = demographic or name
        elif name in GENRES:
            genres.append(name)
        else:
            themes.append(name)
    return list(dict.fromkeys(genres)), list(dict.fromkeys(themes)), demographic


def parse_duration(text: str) -> float | None:
    """``"24 min per ep"`` -> 24.0, ``"1 hr 55 min"`` -> 115.0, ``"30 sec"`` -> 0.5; None when unknown."""
    if not text:
        return None
    hours, minutes, seconds = _HOURS.search(text), _MINUTES.search(text), _SECONDS.search(text)
    if not (hours or minutes or seconds):
        return None
    total = sum(float(m.group(1)) * k for m, k in ((hours, 60), (minutes, 1), (seconds, 1 / 60)) if m)
    return round(total, 2) or None


def _text(value: str | None) -> str:
    value = (value or "").strip()
    return "" if value.lower() in MISSING else value


def _list(value: str | None) -> list[str]:
    return [p for p in (x.strip() for x in _text(value).split(",")) if p and p.lower() not in MISSING]


def _synopsis(value: str | None) -> str:
    text = _text(value)
    if text.lower().startswith(("no synopsis", "no description")):
        return ""
    return text


def _float(value: str | None) -> float | None:
    try:
        number = float(_text(value).replace(",", ""))
    except ValueError:
        return None
    return number if number == number else None  # NaN


def _int(value: str | None) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


def _year(text: str) -> int | None:
    found = _YEAR.search(text)
    return int(found.group(1)) if found else None
