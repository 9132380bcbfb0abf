"""Meta's webhooks, after the API stored them: parse, route by phone number, apply statuses, record inbound."""
