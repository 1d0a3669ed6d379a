"""The OpenAPI 3.1 description of the REST API (served at /v1/openapi.json)."""

from __future__ import annotations

from typing import Any

MAX_TOP_N = 50
MAX_RECOMMEND = 25
MAX_TAGS = 500  # max_tags of POST /v1/tag

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "examples": ["not_an_image", "too_large", "rate_limited"]},
                "message": {"type": "string"},
                "error_id": {"type": "string", "description": "Quote it to an admin: it is in the logs."},
                "retry_after_s": {"type": "integer", "description": "rate limited: seconds to wait"},
                "did_you_mean": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "ambiguous title: the titles it could be",
                },
            },
        }
    },
}
CANDIDATE = {
    "type": "object",
    "required": ["name", "series", "confidence", "similarity"],
    "properties": {
        "name": {"type": "string"},
        "series": {"type": "string"},
        "confidence": {"type": "number"},
        "similarity": {"type": "number"},
    },
}
HEAD = {
    "type": "object",
    "required": ["box", "name", "confidence", "candidates"],
    "properties": {
        "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
        "detection_score": {"type": "number"},
        "name": {"type": "string", "description": "a character name, or 'unknown'"},
        "confidence": {"type": "number"},
        "candidates": {"type": "array", "items": {"$ref": "#/components/schemas/Candidate"}},
    },
}
RESULT = {
    "type": "object",
    "required": ["image_sha256", "width", "height", "heads", "tags", "rating", "caption"],
    "properties": {
        "image_sha256": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "heads": {"type": "array", "items": {"$ref": "#/components/schemas/Head"}},
        "tags": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "score": {"type": "number"},
                    "category": {"type": "string"},
                },
            },
        },
        "rating": {"type": ["string", "null"]},
        "caption": {"type": ["string", "null"]},
        "degraded": {"type": "array"},
    },
}
ANALYSIS = {
    "type": "object",
    "required": ["job_id", "result", "annotated_url"],
    "properties": {
        "job_id": {"type": "string"},
        "cached": {"type": "boolean"},
        "result": {"$ref": "#/components/schemas/AnalysisResult"},
        "sure_threshold": {
            "type": "number",
            "description": "heads named below this confidence (or 'unknown') are shown as 'not sure'",
        },
        "annotated_url": {"type": "string", "description": "the annotated picture, reply-sized JPEG"},
        "annotated_png_url": {
            "type": "string",
            "description": "the full-size annotated PNG (full_size=true)",
        },
    },
}
JOB = {
    "type": "object",
    "required": ["id", "kind", "status", "progress", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
        "progress": {"type": "number"},
        "created_at": {"type": "number"},
        "updated_at": {"type": "number"},
        "error": {"type": ["object", "null"]},
        "result": {"description": "the job's JSON result when done (an AnalysisResult for analyses)"},
        "annotated_url": {"type": "string"},
        "annotated_png_url": {"type": "string"},
    },
}
CATALOG_ANSWER = {
    "type": "object",
    "description": "the catalogue's answer (core.catalog): `items` for /v1/recommend, `anime` for /v1/anime; "
    "`message` alone when there is nothing to list",
    "properties": {
        "items": {"type": "array", "items": {"type": "object"}},
        "anime": {"type": ["object", "null"]},
        "matched": {"type": ["object", "null"]},
        "message": {"type": "string"},
    },
}
TAGGED_PICTURE = {
    "type": "object",
    "required": ["filename", "sha256"],
    "description": "one picture, in the order sent: its caption and tags, or its error",
    "properties": {
        "filename": {"type": "string"},
        "sha256": {"type": "string"},
        "caption": {"type": "string", "examples": ["general, 1girl, solo, very long hair, ^_^"]},
        "rating": {"type": ["string", "null"]},
        "tags": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "score", "category"],
                "properties": {
                    "name": {"type": "string"},
                    "score": {"type": "number"},
                    "category": {"type": "string", "enum": ["general", "character", "rating"]},
                },
            },
        },
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
TAG_ANSWER = {
    "type": "object",
    "required": ["job_id", "model", "pictures"],
    "properties": {
        "job_id": {"type": "string", "description": "empty when no picture could be sent"},
        "model": {"type": ["string", "null"], "description": "the tagger's version"},
        "pictures": {"type": "array", "items": {"$ref": "#/components/schemas/TaggedPicture"}},
    },
}
HEALTH = {
    "type": "object",
    "required": ["redis", "workers", "healthy"],
    "properties": {
        "redis": {"type": "boolean", "description": "Redis answers"},
        "workers": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "live workers per queue (gpu: analyses, cpu: catalogue, train: retraining)",
        },
        "healthy": {"type": "boolean", "description": "Redis answers and a gpu worker is alive"},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _query(name: str, description: str, *, required: bool = False, kind: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": kind},
    }


SECURITY = [{"bearer": []}]
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def _protected(operation: dict[str, Any]) -> dict[str, Any]:
    """Add what every authorised route may answer: 401 without the token, 500 with an error id."""
    responses = {
        **operation["responses"],
        "401": _error("missing or wrong bearer token (only when the server has ANIBOT_API_TOKEN)"),
        "500": _error("internal error (the message carries an error_id that is in the logs)"),
    }
    return {**operation, "responses": dict(sorted(responses.items()))}


# --- the web page's user routes (bot/api/web_api.py) ------------------------------------------------------------

ANIME_ITEM = {
    "type": "object",
    "required": ["id", "title"],
    "description": "one anime, short (core.catalog.answers.AnimeSummary)",
    "properties": {
        "id": {"type": "integer", "description": "the catalogue's id: what /v1/favourites/{anime_id} takes"},
        "mal_id": {"type": ["integer", "null"]},
        "title": {"type": "string"},
        "english_title": {"type": "string"},
        "japanese_title": {"type": "string"},
        "kind": {"type": "string", "examples": ["TV", "Movie"]},
        "year": {"type": ["integer", "null"]},
        "score": {"type": ["number", "null"]},
        "genres": {"type": "array", "items": {"type": "string"}},
        "mal_url": {"type": "string"},
    },
}
ANIME_SEARCH = {
    "type": "object",
    "required": ["items", "page", "pages", "total"],
    "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/AnimeItem"}},
        "page": {"type": "integer"},
        "pages": {"type": "integer", "description": "pages in all (at least 1)"},
        "total": {"type": "integer", "description": "matches in all"},
    },
}
GENRES = {
    "type": "object",
    "required": ["genres"],
    "properties": {"genres": {"type": "array", "items": {"type": "string"}}},
}
FAVOURITES = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/AnimeItem"}},
        "changed": {
            "type": "boolean",
            "description": "PUT/DELETE: false when it already was (or was not) one",
        },
    },
}
CORRECTION = {
    "type": "object",
    "required": ["correction_id", "status"],
    "properties": {
        "correction_id": {"type": "integer"},
        "status": {
            "type": "string",
            "enum": ["pending", "approved"],
            "description": "pending: an admin reviews it; approved: enough people agreed, it is being learnt",
        },
    },
}
ANALYSIS_EVENT = {
    "type": "object",
    "required": ["event"],
    "description": "one line of POST /v1/analyze?stream=true: `queued` (job_id, position), `status` (job_id, "
    "status, position: null while running, stage), then one `result` (the Analysis body's fields) or `error` "
    "(status: the HTTP status the plain route would answer, error)",
    "properties": {
        "event": {"type": "string", "enum": ["queued", "status", "result", "error"]},
        "job_id": {"type": "string"},
        "position": {"type": ["integer", "null"], "description": "place in the gpu queue, 1 = next"},
        "status": {"type": ["string", "integer"]},
        "stage": {"type": ["string", "null"]},
        "error": ERROR["properties"]["error"],
    },
}
WEB_USER_SCHEMAS = {
    "AnimeItem": ANIME_ITEM,
    "AnimeSearch": ANIME_SEARCH,
    "Genres": GENRES,
    "Favourites": FAVOURITES,
    "Correction": CORRECTION,
    "AnalysisEvent": ANALYSIS_EVENT,
}
BROWSER = {
    "name": "X-Anibot-Browser",
    "in": "header",
    "required": True,
    "description": "the browser's own random id (22-64 of A-Z a-z 0-9 _ -): whose favourites these are",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22,64}$"},
}
ANIME_ID = {"name": "anime_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
RATE_LIMITED = {**_error("rate limited (see Retry-After)"), "headers": RETRY_AFTER}


def _favourites_operation(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [BROWSER, ANIME_ID],
        "responses": {
            "200": _json("the favourites after it", "Favourites"),
            "400": _error("no (valid) X-Anibot-Browser header (no_browser_id), or a bad anime id"),
            "404": _error("no anime has this id"),
            "429": RATE_LIMITED,
            "503": _error("no worker running"),
        },
    }


def web_user_paths() -> dict[str, Any]:
    return {
        "/v1/jobs/{job_id}/corrections": {
            "post": {
                "summary": "Wrong? Tell me who: correct a head of an analysis asked for through the API",
                "parameters": [
                    {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "head": {"type": "integer", "minimum": 1, "description": "default 1"},
                                    "name": {"type": "string", "examples": ["Hatsune Miku"]},
                                    "series": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json("the correction, recorded", "Correction"),
                    "400": _error("not JSON, a bad name (bad_name) or no such head (bad_head)"),
                    "404": _error("no such analysis (or not one asked for through the API), or expired"),
                    "408": _error("the body was too slow to arrive (ANIBOT_API_READ_TIMEOUT_S)"),
                    "409": _error("the analysis has not finished, or failed"),
                    "413": _error("the body is too large"),
                    "429": RATE_LIMITED,
                },
            }
        },
        "/v1/anime/search": {
            "get": {
                "summary": "Search anime by name and genre, a page at a time",
                "parameters": [
                    _query("q", "a name (fuzzy); /search's filters (type:TV) work too; none: most popular"),
                    {
                        **_query("genre", "a genre every match has (repeat for several, at most 5)"),
                        "schema": {"type": "array", "items": {"type": "string"}},
                        "style": "form",
                        "explode": True,
                    },
                    {
                        **_query("page", "1 = the first (10 items a page)", kind="integer"),
                        "schema": {"type": "integer", "minimum": 1},
                    },
                ],
                "responses": {
                    "200": _json("a page of matches", "AnimeSearch"),
                    "400": _error("page out of range, or too many genres"),
                    "429": RATE_LIMITED,
                    "503": _error("no worker running"),
                },
            }
        },
        "/v1/genres": {
            "get": {
                "summary": "Every genre of the catalogue (what search's genre takes)",
                "responses": {
                    "200": _json("the genres, sorted", "Genres"),
                    "429": RATE_LIMITED,
                    "503": _error("no worker running"),
                },
            }
        },
        "/v1/favourites": {
            "get": {
                "summary": "This browser's favourite anime",
                "parameters": [BROWSER],
                "responses": {
                    "200": _json("the favourites", "Favourites"),
                    "400": _error("no (valid) X-Anibot-Browser header (no_browser_id)"),
                    "429": RATE_LIMITED,
                    "503": _error("no worker running"),
                },
            }
        },
        "/v1/favourites/{anime_id}": {
            "put": _favourites_operation("Add an anime (by its id) to this browser's favourites"),
            "delete": _favourites_operation("Remove an anime (by its id) from this browser's favourites"),
        },
    }


# --- the admin routes (bot/api/admin_api.py): the admin token only -----------------------------------------------

ADMIN_SECURITY = [{"bearer": []}]  # the admin token, whether or not the user routes need one
BOX = {
    "type": "array",
    "items": {"type": "number"},
    "minItems": 4,
    "maxItems": 4,
    "description": "x1, y1, x2, y2",
}
ADMIN_CHARACTERS = {
    "type": "object",
    "required": ["characters"],
    "properties": {
        "characters": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "series", "references", "updated_at", "thumbnails"],
                "properties": {
                    "name": {"type": "string"},
                    "series": {"type": "string"},
                    "references": {"type": "integer"},
                    "updated_at": {
                        "type": ["string", "null"],
                        "description": "ISO 8601, of its newest reference",
                    },
                    "thumbnails": {
                        "type": "array",
                        "items": {"type": "string", "examples": ["/v1/admin/references/<sha256>.png"]},
                        "description": "one per reference, oldest first (404 for those whose crop was not kept)",
                    },
                },
            },
        }
    },
}
ADMIN_PREVIEW = {
    "type": "object",
    "required": ["pictures"],
    "properties": {
        "pictures": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "filename", "width", "height", "heads", "chosen"],
                "properties": {
                    "index": {"type": "integer", "description": "0-based, in the order sent"},
                    "filename": {"type": "string"},
                    "width": {"type": "integer", "description": "as decoded (after the EXIF orientation)"},
                    "height": {"type": "integer"},
                    "heads": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["box", "score"],
                            "properties": {"box": BOX, "score": {"type": "number"}},
                        },
                    },
                    "chosen": {
                        "type": ["integer", "null"],
                        "description": "the head teaching would use (the largest); null: the whole picture",
                    },
                },
            },
        },
        "detector": {"type": "boolean", "description": "false when the worker has no head detector"},
    },
}
JOB_ACCEPTED = {
    "type": "object",
    "required": ["job_id"],
    "properties": {"job_id": {"type": "string", "description": "follow it with GET /v1/admin/jobs/{job_id}"}},
}
REVIEW_ITEMS = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "id",
                    "kind",
                    "job_id",
                    "head",
                    "name",
                    "series",
                    "predicted",
                    "agreeing",
                    "crop_url",
                ],
                "properties": {
                    "id": {"type": "integer"},
                    "kind": {
                        "type": "string",
                        "enum": ["correction", "proposal"],
                        "description": "a user's correction, or a confident tagger answer proposed as a reference",
                    },
                    "reason": {"type": ["string", "null"], "description": "why a proposal was made"},
                    "job_id": {"type": "string"},
                    "head": {"type": "integer", "description": "1-based, as numbered on the picture"},
                    "name": {"type": "string"},
                    "series": {"type": "string"},
                    "predicted": {"type": ["string", "null"], "description": "what the bot said"},
                    "agreeing": {"type": "integer", "description": "different users giving this name"},
                    "created_at": {"type": ["string", "null"]},
                    "crop_url": {"type": ["string", "null"]},
                },
            },
        }
    },
}
REVIEWED = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {
        "id": {"type": "integer"},
        "status": {"type": "string", "enum": ["approved", "rejected"]},
        "job_id": {"type": "string", "description": "approve: the job that makes the head a reference"},
    },
}
ADMIN_JOB = {
    "type": "object",
    "required": ["id", "kind", "status", "progress", "created_at", "updated_at", "error"],
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string", "examples": ["characters.add", "retrain"]},
        "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
        "subject": {"type": "string", "description": "the character or the model it is about"},
        "progress": {
            "type": "object",
            "required": ["fraction"],
            "description": "fraction (0-1) and what the job reports: stage, epoch, epochs, loss, eta_s",
            "properties": {"fraction": {"type": "number"}, "stage": {"type": "string"}},
        },
        "created_at": {"type": "number"},
        "updated_at": {"type": "number"},
        "error": {"type": ["object", "null"]},
        "result": {"description": "GET /v1/admin/jobs/{job_id} once done: its message and the rest"},
    },
}
ADMIN_JOBS = {
    "type": "object",
    "required": ["jobs"],
    "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/AdminJob"}}},
}
CANCELLING = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {"id": {"type": "string"}, "status": {"type": "string", "enum": ["cancelling"]}},
}
MODEL = {
    "type": "object",
    "required": ["name", "format", "version", "active"],
    "properties": {
        "name": {"type": "string"},
        "format": {"type": "string"},
        "version": {"type": "string"},
        "provenance": {"type": "string"},
        "active": {"type": "boolean"},
    },
}
MODELS = {
    "type": "object",
    "required": ["slots"],
    "properties": {
        "slots": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["slot", "active", "installed"],
                "properties": {
                    "slot": {"type": "string", "enum": ["detector", "embedder", "tagger", "captioner"]},
                    "active": {"anyOf": [{"$ref": "#/components/schemas/Model"}, {"type": "null"}]},
                    "installed": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
                },
            },
        }
    },
}
WHOAMI = {"type": "object", "required": ["admin"], "properties": {"admin": {"const": True}}}
ADMIN_SCHEMAS = {
    "Whoami": WHOAMI,
    "AdminCharacters": ADMIN_CHARACTERS,
    "AdminPreview": ADMIN_PREVIEW,
    "JobAccepted": JOB_ACCEPTED,
    "ReviewItems": REVIEW_ITEMS,
    "Reviewed": REVIEWED,
    "AdminJob": ADMIN_JOB,
    "AdminJobs": ADMIN_JOBS,
    "Cancelling": CANCELLING,
    "Model": MODEL,
    "Models": MODELS,
}
PICTURES_FORM = {
    "type": "array",
    "items": {"type": "string", "format": "binary"},
    "description": "1-20 pictures, each at most ANIBOT_MAX_IMAGE_BYTES",
}
NAME_QUERY = [
    _query("name", "the character's name", required=True),
    _query("series", "its series (optional)"),
]
SHA256_PATH = {
    "name": "sha256",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "description": "the reference's id (from its thumbnail URL)",
}
CORRECTION_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
ADMIN_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
PNG = {"description": "PNG", "content": {"image/png": {}}}


def _admin(summary: str, responses: dict[str, Any], **rest: Any) -> dict[str, Any]:
    """An admin operation: the admin bearer token, 403 without it, 500 with an error id."""
    every = {
        "401": _error("no bearer token where the server requires ANIBOT_API_TOKEN"),
        "403": _error(
            "not the admin token (forbidden), or the server has no ANIBOT_API_ADMIN_TOKEN (admin_off)"
        ),
        "500": _error("internal error (the message carries an error_id that is in the logs)"),
    }
    return {
        "summary": summary,
        "security": ADMIN_SECURITY,
        **rest,
        "responses": dict(sorted({**responses, **every}.items())),
    }


def _pictures_body(extra: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": {"image": PICTURES_FORM, **extra}}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def admin_paths() -> dict[str, Any]:
    pictures_refused = "no picture, more than 20, one that is not a picture (its index), or a bad field"
    return {
        "/v1/admin/whoami": {
            "get": _admin("Whether the token is the admin token", {"200": _json("the admin token", "Whoami")})
        },
        "/v1/admin/characters": {
            "get": _admin(
                "The characters the bot knows, with a thumbnail per reference",
                {"200": _json("the characters", "AdminCharacters")},
            ),
            "post": _admin(
                "Teach a character from 1-20 pictures (the job /addcharacter queues), with chosen regions",
                {
                    "202": _json("queued", "JobAccepted"),
                    "400": _error(
                        f"{pictures_refused}: no_name, bad_name, bad_boxes (not JSON or not one per picture), "
                        "bad_box (outside its picture)"
                    ),
                    "408": _error("the upload was too slow"),
                    "413": _error("a picture, or the whole request, is too large"),
                    "503": _error("no training worker running: nothing was queued"),
                },
                requestBody=_pictures_body(
                    {
                        "name": {"type": "string"},
                        "series": {"type": "string"},
                        "boxes": {
                            "type": "string",
                            "description": "JSON list, one entry per picture in order: [x1, y1, x2, y2] (that "
                            "region, in the picture's pixels) or null (the largest head)",
                        },
                    },
                    ["image", "name"],
                ),
            ),
            "delete": _admin(
                "Forget a character (the job /removecharacter queues)",
                {
                    "202": _json("queued", "JobAccepted"),
                    "400": _error("no or a bad name"),
                    "404": _error("no such character"),
                    "503": _error("no training worker running"),
                },
                parameters=NAME_QUERY,
            ),
        },
        "/v1/admin/characters/preview": {
            "post": _admin(
                "The heads of each picture and the one teaching would use (found by a worker)",
                {
                    "200": _json("each picture's heads", "AdminPreview"),
                    "400": _error(pictures_refused),
                    "408": _error("the upload was too slow"),
                    "413": _error("a picture, or the whole request, is too large"),
                    "503": _error("no worker running, or too busy"),
                },
                requestBody=_pictures_body({}, ["image"]),
            )
        },
        "/v1/admin/references/{sha256}.png": {
            "get": _admin(
                "A reference's head crop (at most 256 px a side)",
                {"200": PNG, "404": _error("no crop kept for it")},
                parameters=[SHA256_PATH],
            )
        },
        "/v1/admin/references/{sha256}": {
            "delete": _admin(
                "Forget one reference of a character; the gallery is published without it",
                {
                    "202": _json("queued", "JobAccepted"),
                    "400": _error("no or a bad name"),
                    "404": _error("the character has no such reference"),
                    "503": _error("no training worker running"),
                },
                parameters=[SHA256_PATH, *NAME_QUERY],
            )
        },
        "/v1/admin/review": {
            "get": _admin(
                "The review queue: users' pending corrections, oldest first",
                {"200": _json("pending corrections", "ReviewItems")},
            )
        },
        "/v1/admin/review/{id}/crop.png": {
            "get": _admin(
                "The corrected head, cut from the kept picture",
                {"200": PNG, "404": _error("no such correction, or its picture expired")},
                parameters=[CORRECTION_ID],
            )
        },
        "/v1/admin/review/{id}/approve": {
            "post": _admin(
                "Approve a correction: the head becomes a reference (job_id: the apply job)",
                {
                    "200": _json("approved", "Reviewed"),
                    "404": _error("no such correction"),
                    "409": _error("already reviewed"),
                },
                parameters=[CORRECTION_ID],
            )
        },
        "/v1/admin/review/{id}/reject": {
            "post": _admin(
                "Reject a correction",
                {
                    "200": _json("rejected", "Reviewed"),
                    "404": _error("no such correction"),
                    "409": _error("already reviewed"),
                },
                parameters=[CORRECTION_ID],
            )
        },
        "/v1/admin/jobs": {
            "get": _admin(
                "Admin jobs with their progress, newest first (as /jobs)",
                {"200": _json("the jobs", "AdminJobs")},
            )
        },
        "/v1/admin/jobs/{job_id}": {
            "get": _admin(
                "One admin job, with its result once done",
                {"200": _json("the job", "AdminJob"), "404": _error("no such admin job, or expired")},
                parameters=[ADMIN_JOB_ID],
            )
        },
        "/v1/admin/jobs/{job_id}/cancel": {
            "post": _admin(
                "Cancel an admin job (it stops at its next step and changes nothing)",
                {
                    "200": _json("cancel requested", "Cancelling"),
                    "404": _error("no such admin job"),
                    "409": _error("already finished"),
                },
                parameters=[ADMIN_JOB_ID],
            )
        },
        "/v1/admin/models": {
            "get": _admin(
                "The models installed in each slot and the active one", {"200": _json("models", "Models")}
            )
        },
    }


def openapi_document(*, auth: bool) -> dict[str, Any]:
    """The description; ``auth`` when the server requires a bearer token (then every route but the open
    ones, marked ``security: []``, needs it)."""
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "anibot",
            "version": "1",
            "description": "Find, identify, tag and caption anime characters; recommend anime.",
        },
        "components": {
            "schemas": {
                "Error": ERROR,
                "Candidate": CANDIDATE,
                "Head": HEAD,
                "AnalysisResult": RESULT,
                "Analysis": ANALYSIS,
                "Job": JOB,
                "CatalogAnswer": CATALOG_ANSWER,
                "Health": HEALTH,
                "TaggedPicture": TAGGED_PICTURE,
                "TagAnswer": TAG_ANSWER,
                **WEB_USER_SCHEMAS,
                **ADMIN_SCHEMAS,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": SECURITY if auth else [],
        "paths": {
            "/v1/analyze": {
                "post": {
                    "summary": "Analyse a picture: heads with names and candidates, tags, rating, caption",
                    "parameters": [
                        {
                            "name": "full_size",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean"},
                            "description": "also draw the full-size annotated PNG (annotated_png_url)",
                        },
                        {
                            "name": "stream",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean"},
                            "description": "answer NDJSON lines (AnalysisEvent) as it goes: queued, status "
                            "about every second, then the result or the error (bot/api/web_api.py)",
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "properties": {
                                        "image": {"type": "string", "format": "binary"},
                                        "top_n": {
                                            "type": "integer",
                                            "minimum": 1,
                                            "maximum": MAX_TOP_N,
                                            "description": "candidates kept per head (at most the "
                                            "server's ANIBOT_TOP_N)",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            **_json("the analysis", "Analysis"),
                            "content": {
                                **_json("the analysis", "Analysis")["content"],
                                "application/x-ndjson": {
                                    "schema": {"$ref": "#/components/schemas/AnalysisEvent"}
                                },
                            },
                        },
                        "400": _error("not an image, broken, unsupported format, or no image part"),
                        "408": _error("the upload was too slow (each part within ANIBOT_API_READ_TIMEOUT_S)"),
                        "413": _error("the file is too large (refused before it is read)"),
                        "429": {
                            **_error("rate limited (see Retry-After) or a job of yours is still running"),
                            "headers": RETRY_AFTER,
                        },
                        "503": _error("no worker running, or too busy"),
                    },
                }
            },
            "/v1/tag": {
                "post": {
                    "summary": "Tag a batch of pictures as `anibot tag` does: a caption and scored tags each",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "properties": {
                                        "image": {
                                            "type": "array",
                                            "items": {"type": "string", "format": "binary"},
                                            "description": "one part per picture, at most ANIBOT_TAG_MAX_IMAGES",
                                        },
                                        "general": {"type": "number", "minimum": 0, "maximum": 1},
                                        "character": {"type": "number", "minimum": 0, "maximum": 1},
                                        "rating": {"type": "boolean"},
                                        "exclude": {
                                            "type": "string",
                                            "description": "comma list; * patterns",
                                        },
                                        "include_first": {"type": "string", "description": "comma list"},
                                        "max_tags": {"type": "integer", "minimum": 1, "maximum": MAX_TAGS},
                                        "underscores": {"type": "string", "enum": ["keep", "spaces"]},
                                        "keep_kaomoji": {"type": "boolean"},
                                        "drop_implied": {"type": "boolean"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("each picture's caption and tags (or its error)", "TagAnswer"),
                        "400": _error("no image part, too many pictures, or a bad option"),
                        "408": _error("the upload was too slow (within ANIBOT_API_READ_TIMEOUT_S)"),
                        "413": _error("a picture, or the whole request, is too large"),
                        "429": {
                            **_error(
                                "rate limited (see Retry-After) or a tagging request of yours still runs"
                            ),
                            "headers": RETRY_AFTER,
                        },
                        "503": _error("no worker running, no tagger installed, or too busy"),
                    },
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "A job's status, progress and result",
                    "parameters": [
                        {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": _json("the job", "Job"), "404": _error("no such job (or expired)")},
                }
            },
            "/v1/jobs/{job_id}/annotated.jpg": {
                "get": {
                    "summary": "The annotated picture of a finished analysis (reply-sized JPEG)",
                    "parameters": [
                        {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {"description": "JPEG", "content": {"image/jpeg": {}}},
                        "404": _error("no such job, not an analysis, not finished, or expired"),
                    },
                }
            },
            "/v1/jobs/{job_id}/annotated.png": {
                "get": {
                    "summary": "The full-size annotated PNG of an analysis asked for with full_size=true",
                    "parameters": [
                        {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {"description": "PNG", "content": {"image/png": {}}},
                        "404": _error("no such job, not asked for full size, not finished, or expired"),
                    },
                }
            },
            "/v1/recommend": {
                "get": {
                    "summary": "Anime like a title",
                    "parameters": [
                        _query("title", "an anime title (fuzzy)", required=True),
                        {
                            **_query("n", f"how many (default 5, at most {MAX_RECOMMEND})", kind="integer"),
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_RECOMMEND},
                        },
                    ],
                    "responses": {
                        "200": _json("recommendations", "CatalogAnswer"),
                        "400": _error("no title, or n out of range"),
                        "404": _error("no such anime (did_you_mean lists suggestions when ambiguous)"),
                        "503": _error("no worker running"),
                    },
                }
            },
            "/v1/anime": {
                "get": {
                    "summary": "Details of an anime",
                    "parameters": [_query("title", "an anime title (fuzzy)", required=True)],
                    "responses": {
                        "200": _json("the anime", "CatalogAnswer"),
                        "400": _error("no title"),
                        "404": _error("no such anime"),
                        "503": _error("no worker running"),
                    },
                }
            },
            "/v1/health": {
                "get": {
                    "summary": "Redis reachable and workers alive per queue",
                    "security": [],
                    "responses": {
                        "200": _json("healthy", "Health"),
                        "503": _json("Redis unreachable or no gpu worker", "Health"),
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI"}},
                }
            },
            "/v1/docs": {
                "get": {
                    "summary": "A page listing the routes",
                    "security": [],
                    "responses": {"200": {"description": "HTML"}},
                }
            },
            **web_user_paths(),
            **admin_paths(),
        },
    }
    for methods in document["paths"].values():
        for method, operation in methods.items():
            if "security" not in operation:
                methods[method] = _protected(operation)
    return document
