"""Media pipeline: safe fetch → type check → store (signed URL) → upload to Meta (reused) → media id."""
