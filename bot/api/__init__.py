"""The REST front-end (aiohttp) over the command layer."""
