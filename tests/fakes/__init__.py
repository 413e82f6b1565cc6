"""Fake remote services for tests: real client libraries talk to them over 127.0.0.1."""
