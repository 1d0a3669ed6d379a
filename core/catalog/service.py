"""``CatalogService``: the one entry point of the catalogue commands (``/recommend``, ``/anime``, ``/search``,
``/fav``) for the CLI, the workers of the ``cpu`` queue and, through them, the bots and the REST API.

One instance per process. The catalogue, its name index, the synopsis embedder and the vector index are loaded
on first use and reloaded when the store's catalogue version changes (an import, checked every few seconds).
Synopsis embeddings of a persistent embedder are stored in SQL, keyed by the embedder and the synopsis hash, so
a restart or a re-import embeds only new or changed synopses. Every method returns a frozen answer dataclass
(``core.catalog.answers``).
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.catalog.answers import (
    AnimeDetails,
    AnimeSummary,
    DetailsAnswer,
    FavouritesAnswer,
    GenresAnswer,
    Lookup,
    RecommendAnswer,
    RecommendItem,
    SearchAnswer,
    mal_url,
)
from core.catalog.embedders import TextEmbedder, load_text_embedder
from core.catalog.metadata import MetadataFeatures, split_list
from core.catalog.recommender import Recommender
from core.catalog.shipped import ensure_catalogue
from core.catalog.titles import MatchKind, NameIndex, fold
from core.settings import Settings
from core.storage.store import AnimeRecord, Store

log = logging.getLogger(__name__)

RECHECK_S = 3.0  # how often the catalogue version is looked at
MAX_N = 50
SUGGESTIONS = 5
ProgressFn = Callable[[int, int], None]
GENRE_KEYS = ("genre", "genres", "g")
KIND_KEYS = ("type", "kind", "t")


def embed_text(record: AnimeRecord) -> str:
    """What the synopsis embedder reads: the synopsis, or the title and genres when there is none."""
    return record.synopsis.strip() or f"{record.title}. {record.genres.replace(',', ', ')}"


@dataclass(frozen=True)
class LoadedCatalogue:
    version: int
    records: list[AnimeRecord]
    by_id: dict[int, int]  # store id -> position
    names: NameIndex
    recommender: Recommender
    embedder: str


@dataclass(frozen=True)
class Resolved:
    lookup: Lookup
    position: int | None = None
    did_you_mean: tuple[str, ...] = ()


class CatalogService:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._lock = threading.RLock()
        self._loaded: LoadedCatalogue | None = None
        self._checked_at = 0.0
        self._embedder: TextEmbedder | None = None
        self._tables_ready = False

    # --- loading ----------------------------------------------------------------------------------------

    def embedder(self) -> TextEmbedder:
        """The synopsis embedder (raises ``EmbedderRefused`` for weights with the wrong hash)."""
        if self._embedder is None:
            self._embedder = load_text_embedder(self.settings)
        return self._embedder

    def catalogue(self, progress: ProgressFn | None = None) -> LoadedCatalogue:
        """The loaded catalogue, (re)loaded when the store's changed; ``progress`` sees embedding."""
        with self._lock:
            now = time.monotonic()
            if self._loaded is not None and now - self._checked_at < RECHECK_S and progress is None:
                return self._loaded
            if not self._tables_ready:
                self.store.create_all()
                self._tables_ready = True
            ensure_catalogue(self.settings, self.store)
            version = self.store.catalog_version()
            self._checked_at = now
            if self._loaded is None or self._loaded.version != version:
                self._loaded = self._load(version, progress)
            return self._loaded

    def reload(self, progress: ProgressFn | None = None) -> LoadedCatalogue:
        with self._lock:
            self._loaded = None
            return self.catalogue(progress)

    def _load(self, version: int, progress: ProgressFn | None) -> LoadedCatalogue:
        started = time.perf_counter()
        records = self.store.all_anime()
        embedder = self.embedder()
        vectors = self._vectors(records, embedder, progress)
        features = MetadataFeatures(records, self.settings.recommend_weights)
        recommender = Recommender(
            records,
            vectors,
            features,
            alpha=self.settings.recommend_alpha,
            candidates=self.settings.recommend_candidates,
        )
        names = NameIndex(
            [[r.title, r.english_title, r.japanese_title, *r.other_names.splitlines()] for r in records],
            popularity=[float(r.members or 0) + (r.score or 0.0) for r in records],
        )
        log.info("catalogue loaded: %d titles, embedder %s, %.1f s", len(records), embedder.name,
                 time.perf_counter() - started)  # fmt: skip
        by_id = {r.id: i for i, r in enumerate(records) if r.id is not None}
        return LoadedCatalogue(version, records, by_id, names, recommender, embedder.name)

    def _vectors(self, records: Sequence[AnimeRecord], embedder: TextEmbedder,
                 progress: ProgressFn | None) -> np.ndarray:  # fmt: skip
        texts = [embed_text(r) for r in records]
        if not embedder.persistent:
            embedder.fit(texts)
            return embedder.embed(texts, progress)
        shas = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        stored = self.store.anime_embeddings(embedder.name)
        missing = [i for i, r in enumerate(records) if r.id not in stored or stored[r.id][0] != shas[i]]
        if missing:
            log.info("embedding %d synopses with %s", len(missing), embedder.name)
            fresh = embedder.embed([texts[i] for i in missing], progress)
            self.store.put_anime_embeddings(
                embedder.name,
                [(records[i].id, shas[i], fresh[j]) for j, i in enumerate(missing)],  # type: ignore[misc]
            )
            for j, i in enumerate(missing):
                stored[records[i].id] = (shas[i], fresh[j])  # type: ignore[index]
        elif progress is not None:
            progress(len(records), len(records))
        if not records:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([stored[r.id][1] for r in records]).astype(np.float32)  # type: ignore[index]

    # --- lookups ----------------------------------------------------------------------------------------

    def resolve(self, title: str, *, among: Sequence[int] | None = None) -> Resolved:
        """One catalogue position for ``title``, or the close titles, or not found."""
        cat = self.catalogue()
        if not cat.records:
            return Resolved(Lookup.EMPTY_CATALOGUE)
        names = cat.names
        if among is not None:
            subset = list(among)
            names = NameIndex([[cat.records[p].title, cat.records[p].english_title, cat.records[p].japanese_title,
                                *cat.records[p].other_names.splitlines()] for p in subset])  # fmt: skip
            match = names.match(title)
            mapped = [subset[i] for i in ((match.index,) if match.index is not None else ())]
            candidates = tuple(subset[i] for i in match.candidates)
        else:
            match = names.match(title)
            mapped = [match.index] if match.index is not None else []
            candidates = match.candidates
        if match.kind in (MatchKind.EXACT, MatchKind.FUZZY):
            return Resolved(Lookup.MATCHED, mapped[0])
        if match.kind is MatchKind.AMBIGUOUS:
            return Resolved(Lookup.AMBIGUOUS, did_you_mean=self._titles(cat, candidates[:SUGGESTIONS]))
        return Resolved(Lookup.NOT_FOUND)

    @staticmethod
    def _titles(cat: LoadedCatalogue, positions: Sequence[int]) -> tuple[str, ...]:
        titles = [cat.records[p].title for p in positions]
        out = []
        for p, t in zip(positions, titles, strict=True):
            year = cat.records[p].year
            out.append(f"{t} ({year})" if titles.count(t) > 1 and year else t)
        return tuple(out)

    @staticmethod
    def _not_found(lookup: Lookup, query: str) -> str:
        if lookup is Lookup.EMPTY_CATALOGUE:
            return "The anime catalogue is empty: import one with `anibot catalog import FILE`."
        if lookup is Lookup.AMBIGUOUS:
            return f"Several anime are close to “{query}”."
        return f"I found no anime called “{query}”."

    # --- commands ---------------------------------------------------------------------------------------

    def recommend(
        self,
        title: str | None,
        *,
        platform: str = "cli",
        user_id: str | None = None,
        n: int = 5,
        offset: int = 0,
        exclude_franchise: bool = True,
        kind: str | None = None,
        min_score: float | None = None,
    ) -> RecommendAnswer:
        """Titles like ``title`` (or, when None, like the user's favourites), ranks ``offset + 1`` to
        ``offset + n``."""
        n = max(1, min(int(n), MAX_N))
        offset = max(0, int(offset))
        cat = self.catalogue()
        matched: AnimeSummary | None = None
        basis: tuple[AnimeSummary, ...] = ()
        if title is not None and title.strip():
            title = title.strip()
            found = self.resolve(title)
            if found.lookup is not Lookup.MATCHED or found.position is None:
                return RecommendAnswer(found.lookup, title, did_you_mean=found.did_you_mean,
                                       message=self._not_found(found.lookup, title))  # fmt: skip
            seeds = [found.position]
            matched = summary(cat.records[found.position])
        else:
            title = None
            favourites = self.store.favourites(platform, str(user_id)) if user_id is not None else []
            seeds = [cat.by_id[f.id] for f in favourites if f.id in cat.by_id]
            if not seeds:
                message = "You have no favourites yet: add some with /fav add <title>."
                return RecommendAnswer(Lookup.NO_FAVOURITES, None, message=message)
            basis = tuple(summary(cat.records[p]) for p in seeds)
        scored, more = cat.recommender.recommend(
            seeds, n=n, offset=offset, exclude_franchise=exclude_franchise, kind=kind, min_score=min_score
        )
        items = tuple(
            RecommendItem(
                **_summary_fields(cat.records[s.position]),
                similarity=s.similarity,
                reason=s.reason,
                story=s.story,
                metadata=s.metadata,
            )
            for s in scored
        )
        message = ""
        if not items:
            message = "No more recommendations." if offset else "Nothing to recommend with these filters."
        return RecommendAnswer(Lookup.MATCHED, title, matched, basis, items=items, offset=offset,
                               has_more=more, message=message)  # fmt: skip

    def details(self, title: str) -> DetailsAnswer:
        title = title.strip()
        found = self.resolve(title)
        if found.lookup is not Lookup.MATCHED or found.position is None:
            return DetailsAnswer(found.lookup, title, did_you_mean=found.did_you_mean,
                                 message=self._not_found(found.lookup, title))  # fmt: skip
        return DetailsAnswer(
            Lookup.MATCHED, title, anime=details_of(self.catalogue().records[found.position])
        )

    def search(self, query: str, *, limit: int = 10, offset: int = 0) -> SearchAnswer:
        """``name genre:Action genre:"Slice of Life" type:TV``: every filter must hold; the name is fuzzy.
        Matches ``offset + 1`` to ``offset + limit``; ``total`` counts them all."""
        cat = self.catalogue()
        name, genres, kind = parse_search(query)
        limit = max(1, min(int(limit), MAX_N))
        offset = max(0, int(offset))
        if not cat.records:
            return SearchAnswer(Lookup.EMPTY_CATALOGUE, query, name, genres, kind,
                                message=self._not_found(Lookup.EMPTY_CATALOGUE, query))  # fmt: skip
        if name:
            exact = cat.names.exact(name)
            ranked = exact + [p for p, _ in cat.names.fuzzy(name, limit=300, cutoff=70.0) if p not in exact]
        else:
            ranked = sorted(range(len(cat.records)),
                            key=lambda p: (-(cat.records[p].members or 0), -(cat.records[p].score or 0.0)))  # fmt: skip
        wanted = [fold(g) for g in genres]
        hits = []
        for p in ranked:
            r = cat.records[p]
            if kind and fold(r.kind) != fold(kind):
                continue
            labels = {fold(x) for x in (*split_list(r.genres), *split_list(r.themes), r.demographic) if x}
            if any(g not in labels for g in wanted):
                continue
            hits.append(p)
        items = tuple(summary(cat.records[p]) for p in hits[offset : offset + limit])
        message = "" if items else f"Nothing found for “{query}”." if not hits else "No more matches."
        return SearchAnswer(Lookup.MATCHED if hits else Lookup.NOT_FOUND, query, name, genres, kind, items,
                            len(hits), message)  # fmt: skip

    def genres(self) -> GenresAnswer:
        """Every genre in the catalogue, sorted case-insensitively."""
        found = {g for r in self.catalogue().records for g in split_list(r.genres) if g}
        return GenresAnswer(tuple(sorted(found, key=str.casefold)))

    def favourites(
        self,
        op: Literal["add", "remove", "list"],
        title: str | None,
        *,
        platform: str,
        user_id: str,
        anime_id: int | None = None,
    ) -> FavouritesAnswer:
        """Add, remove or list a user's favourites; the title is fuzzy, an ``anime_id`` (the catalogue's id,
        ``AnimeSummary.id``) names one exactly instead."""
        cat = self.catalogue()
        user_id = str(user_id)

        def listing() -> tuple[AnimeSummary, ...]:
            return tuple(summary(r) for r in self.store.favourites(platform, user_id))

        if op == "list":
            items = listing()
            return FavouritesAnswer("list", Lookup.MATCHED, items=items,
                                    message="" if items else "No favourites yet: /fav add <title>.")  # fmt: skip
        if op not in ("add", "remove"):
            raise ValueError(f"unknown favourites operation {op!r}: add, remove or list")
        if anime_id is not None:
            position = cat.by_id.get(int(anime_id))
            if position is None:
                return FavouritesAnswer(op, Lookup.NOT_FOUND, items=listing(),
                                        message=f"No anime has the id {anime_id}.")  # fmt: skip
            return self._change_favourite(op, cat.records[position], platform, user_id, listing)
        if not title or not title.strip():
            return FavouritesAnswer(
                op, Lookup.NOT_FOUND, items=listing(), message=f"Usage: /fav {op} <title>"
            )
        title = title.strip()
        among = None
        if op == "remove":
            mine = [cat.by_id[f.id] for f in self.store.favourites(platform, user_id) if f.id in cat.by_id]
            among = mine if mine and self.resolve(title, among=mine).lookup is Lookup.MATCHED else None
        found = self.resolve(title, among=among)
        if found.lookup is not Lookup.MATCHED or found.position is None:
            return FavouritesAnswer(op, found.lookup, did_you_mean=found.did_you_mean, items=listing(),
                                    message=self._not_found(found.lookup, title))  # fmt: skip
        return self._change_favourite(op, cat.records[found.position], platform, user_id, listing)

    def _change_favourite(
        self,
        op: Literal["add", "remove"],
        record: AnimeRecord,
        platform: str,
        user_id: str,
        listing: Callable[[], tuple[AnimeSummary, ...]],
    ) -> FavouritesAnswer:
        assert record.id is not None
        if op == "add":
            changed = self.store.add_favourite(platform, user_id, record.id)
            message = f"Added {record.title} to your favourites." if changed else \
                f"{record.title} is already one of your favourites."  # fmt: skip
        else:
            changed = self.store.remove_favourite(platform, user_id, record.id)
            message = f"Removed {record.title} from your favourites." if changed else \
                f"{record.title} was not one of your favourites."  # fmt: skip
        return FavouritesAnswer(op, Lookup.MATCHED, summary(record), changed, listing(), message=message)


# --- answer pieces -----------------------------------------------------------------------------------------


def _summary_fields(r: AnimeRecord) -> dict:
    return {
        "mal_id": r.mal_id,
        "title": r.title,
        "english_title": r.english_title,
        "japanese_title": r.japanese_title,
        "kind": r.kind,
        "year": r.year,
        "score": r.score,
        "mal_url": mal_url(r.mal_id),
        "id": r.id,
        "genres": tuple(split_list(r.genres)),
    }


def summary(r: AnimeRecord) -> AnimeSummary:
    return AnimeSummary(**_summary_fields(r))


def details_of(r: AnimeRecord) -> AnimeDetails:
    return AnimeDetails(
        **{k: v for k, v in _summary_fields(r).items()},
        other_names=tuple(r.other_names.splitlines()),
        episodes=r.episodes,
        duration_min=r.duration_min,
        aired=r.aired,
        season=r.season,
        status=r.status,
        members=r.members,
        studios=tuple(split_list(r.studios)),
        themes=tuple(split_list(r.themes)),
        demographic=r.demographic,
        source=r.source,
        rating=r.rating,
        synopsis=r.synopsis,
        image_url=r.image_url,
    )


def parse_search(query: str) -> tuple[str, tuple[str, ...], str]:
    """``'space genre:Sci-Fi genre:"Slice of Life" type:TV'`` -> ``("space", ("Sci-Fi", "Slice of Life"), "TV")``.
    Underscores in a filter value stand for spaces (``genre:slice_of_life``)."""
    try:
        tokens = shlex.split(query)
    except ValueError:  # an unbalanced quote
        tokens = query.replace('"', " ").split()
    words: list[str] = []
    genres: list[str] = []
    kind = ""
    for token in tokens:
        key, sep, value = token.partition(":")
        value = value.replace("_", " ").strip()
        if sep and key.casefold() in GENRE_KEYS and value:
            genres += [g.strip() for g in value.split(",") if g.strip()]
        elif sep and key.casefold() in KIND_KEYS and value:
            kind = value
        else:
            words.append(token)
    return " ".join(words), tuple(genres), kind
