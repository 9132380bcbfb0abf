"""The FlowEstate surface (shared/seeds/flowestate-whatsapp-api.txt), under /api/v1: its routers,
its response schemas and its error envelope (errors.py)."""
