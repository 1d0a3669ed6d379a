"""The small catalogue shipped with anibot (``core/catalog/data/catalogue.csv``, Anime Dataset 2023 layout):
well-known titles with their MyAnimeList facts (ids, studios, genres, years, episodes; scores rounded, as of
2023) and short synopses written for this project. ``CatalogService`` loads it into an empty store, so that
``/recommend`` answers on a fresh machine; importing a full dataset adds to it and updates its rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.catalog.importer import ImportReport, import_catalogue

if TYPE_CHECKING:
    from core.settings import Settings
    from core.storage.store import Store

SHIPPED_CATALOGUE = Path(__file__).resolve().parent / "data" / "catalogue.csv"


def load_shipped(store: Store) -> ImportReport:
    return import_catalogue(store, SHIPPED_CATALOGUE, layout="2023")


def ensure_catalogue(settings: Settings, store: Store) -> ImportReport | None:
    """Load the shipped catalogue when the store has no title yet (and ``ANIBOT_CATALOG_SHIPPED`` is on)."""
    if settings.catalog_shipped and store.anime_count() == 0:
        return load_shipped(store)
    return None
