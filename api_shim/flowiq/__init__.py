"""The FlowIQ surface (shared/seeds/flowiq-send-whatsapp-api.txt): POST /send-whatsapp and its
batch, lookup and submissions routes, and its error envelope (errors.py)."""
