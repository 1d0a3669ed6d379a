"""What ``CatalogService`` answers: frozen dataclasses with ``to_dict()`` / ``from_dict()`` (plain JSON), so that
a worker on the ``cpu`` queue can send them to a front-end, which renders them.

Every answer says how the title it was asked about was found (``lookup``): one title (``matched``), several
close ones (``did_you_mean``), none, or, for ``/recommend`` without a title, that the user has no favourites.
``message`` is a short human sentence for the cases with nothing to list.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import StrEnum
from typing import Any, Literal, TypeVar, get_args, get_origin

MAL_URL = "https://myanimelist.net/anime/{mal_id}"
T = TypeVar("T", bound="_Answer")


class Lookup(StrEnum):
    MATCHED = "matched"  # the title resolved to one anime (or a list needed none)
    AMBIGUOUS = "ambiguous"  # several close titles: see did_you_mean
    NOT_FOUND = "not_found"
    NO_FAVOURITES = "no_favourites"  # /recommend without a title from a user with no favourites
    EMPTY_CATALOGUE = "empty_catalogue"


def mal_url(mal_id: int | None) -> str:
    return MAL_URL.format(mal_id=mal_id) if mal_id is not None else ""


class _Answer:
    """to_dict / from_dict for the frozen dataclasses below (enums as values, tuples as lists)."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                kwargs[f.name] = _typed(hints[f.name], data[f.name])
        return cls(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _typed(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        return _typed(options[0], value) if len(options) == 1 else value
    if origin is tuple:
        return tuple(_typed(get_args(hint)[0], v) for v in value)
    if origin is Literal:
        return value
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return hint(value)
    if isinstance(hint, type) and issubclass(hint, _Answer):
        return hint.from_dict(value)
    return value


@dataclasses.dataclass(frozen=True)
class AnimeSummary(_Answer):
    """One title, short: what lists (search, favourites) and the matched title show."""

    mal_id: int | None
    title: str
    english_title: str = ""
    japanese_title: str = ""
    kind: str = ""
    year: int | None = None
    score: float | None = None
    mal_url: str = ""
    id: int | None = None  # the catalogue's id (the store's): what favourites are kept by
    genres: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RecommendItem(_Answer):
    mal_id: int | None
    title: str
    english_title: str = ""
    japanese_title: str = ""
    kind: str = ""
    year: int | None = None
    score: float | None = None  # the title's MyAnimeList score
    similarity: float = 0.0  # hybrid similarity to the query, 0-1
    reason: str = ""  # "Sci-Fi, Space in common; same studio (Sunrise); similar story"
    mal_url: str = ""
    story: float = 0.0  # the normalised synopsis similarity, 0-1
    metadata: float = 0.0  # the normalised metadata similarity, 0-1
    id: int | None = None
    genres: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class AnimeDetails(_Answer):
    mal_id: int | None
    title: str
    english_title: str = ""
    japanese_title: str = ""
    other_names: tuple[str, ...] = ()
    kind: str = ""
    episodes: int | None = None
    duration_min: float | None = None
    aired: str = ""
    season: str = ""
    year: int | None = None
    status: str = ""
    score: float | None = None
    members: int | None = None
    studios: tuple[str, ...] = ()
    genres: tuple[str, ...] = ()
    themes: tuple[str, ...] = ()
    demographic: str = ""
    source: str = ""
    rating: str = ""
    synopsis: str = ""
    mal_url: str = ""
    image_url: str = ""
    id: int | None = None


@dataclasses.dataclass(frozen=True)
class RecommendAnswer(_Answer):
    lookup: Lookup
    query: str | None = None  # None: from the user's favourites
    matched: AnimeSummary | None = None
    basis: tuple[AnimeSummary, ...] = ()  # the favourites recommended from
    did_you_mean: tuple[str, ...] = ()
    items: tuple[RecommendItem, ...] = ()
    offset: int = 0
    has_more: bool = False
    message: str = ""


@dataclasses.dataclass(frozen=True)
class DetailsAnswer(_Answer):
    lookup: Lookup
    query: str = ""
    anime: AnimeDetails | None = None
    did_you_mean: tuple[str, ...] = ()
    message: str = ""


@dataclasses.dataclass(frozen=True)
class SearchAnswer(_Answer):
    lookup: Lookup
    query: str = ""
    name: str = ""  # the parsed parts of the query
    genres: tuple[str, ...] = ()
    kind: str = ""
    items: tuple[AnimeSummary, ...] = ()
    total: int = 0  # matches before the limit
    message: str = ""


@dataclasses.dataclass(frozen=True)
class FavouritesAnswer(_Answer):
    op: Literal["add", "remove", "list"]
    lookup: Lookup
    anime: AnimeSummary | None = None  # the title added or removed
    changed: bool = False  # False: already a favourite (add), or was not one (remove)
    items: tuple[AnimeSummary, ...] = ()  # the favourites after the operation
    did_you_mean: tuple[str, ...] = ()
    message: str = ""


@dataclasses.dataclass(frozen=True)
class GenresAnswer(_Answer):
    """Every genre in the catalogue, sorted: the values search's ``genre:`` filter takes."""

    genres: tuple[str, ...] = ()
