"""The Telegram front-end (python-telegram-bot) over the command layer."""
