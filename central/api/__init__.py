"""The ops REST API (FastAPI): one router per resource under ``routes/``."""
