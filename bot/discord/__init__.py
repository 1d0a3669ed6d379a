"""The Discord front-end: Discord events in, command-layer calls, embeds out (``bot.discord.app.run``)."""
