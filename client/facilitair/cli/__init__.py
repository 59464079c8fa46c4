"""The facilitair command."""
