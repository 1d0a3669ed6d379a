"""Every command and button, each declared beside its handler (importing this package registers them)."""

from bot.commands import admin, analysis, catalog, general, review  # noqa: F401
