"""Webhooks: signed HTTP callbacks when runs end, from a durable outbox (docs/webhooks.md)."""
