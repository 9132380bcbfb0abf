"""Celery worker: thin tasks that hand off to one module per pipeline step."""
