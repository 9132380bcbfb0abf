"""Shared by the API shim and the worker: settings, tables, enums, the canonical message."""
