"""Anime catalogue and recommendations: import, name search, synopsis embeddings, metadata similarity.

The facade is ``core.catalog.service.CatalogService``; its answers (``core.catalog.answers``) are frozen,
JSON-able dataclasses that travel through the ``cpu`` queue to the front-ends. Importing this package loads
no model library: torch, sentence-transformers and faiss are imported inside the functions that need them.
"""
