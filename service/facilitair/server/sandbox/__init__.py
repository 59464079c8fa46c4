"""The sandbox the Tester's tests run in (bubblewrap), below the pipeline; see runner.py and command.py."""

from facilitair.server.sandbox.command import Limits
from facilitair.server.sandbox.runner import Availability, Sandbox, SandboxKind

__all__ = ["Availability", "Limits", "Sandbox", "SandboxKind"]
