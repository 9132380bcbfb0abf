"""A stand-in for Meta's Graph API that speaks real HTTP: the default peer for local runs and tests."""
