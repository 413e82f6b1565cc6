"""Telegram adapter tests: the real python-telegram-bot client against a fake Bot API."""
