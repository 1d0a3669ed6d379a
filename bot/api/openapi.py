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
                        }
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
                        "200": _json("the analysis", "Analysis"),
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
        },
    }
    for methods in document["paths"].values():
        for method, operation in methods.items():
            if "security" not in operation:
                methods[method] = _protected(operation)
    return document
