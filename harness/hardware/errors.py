"""The one error base class of ``harness.hardware``."""

from __future__ import annotations


class HardwareError(ValueError):
    """A profile or a sizing question that cannot be answered; the message names what and why."""
