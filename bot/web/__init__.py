"""The web page served by ``anibot api`` (static files in ``static/``; ``bot.api.pages`` serves them)."""
