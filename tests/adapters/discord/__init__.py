"""Discord adapter tests: the real discord.py client against a fake REST + gateway."""
