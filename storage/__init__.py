"""Persistence: SQLAlchemy 2.0 async ORM and a repository that speaks bot.types."""
