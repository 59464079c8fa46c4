"""Fake services that the tests run in-process in place of real vendors."""
