"""FastAPI app: auth, one module per API surface, intake (persist + enqueue), error envelopes."""
