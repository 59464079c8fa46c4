"""The facilitair server: the agent team, the durable event log, the gRPC service."""
