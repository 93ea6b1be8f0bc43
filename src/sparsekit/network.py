"""Whether the Hugging Face hub can be reached: one fast probe instead of a minute of retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

__all__ = ["env_true", "hub_reachable"]


def env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (False at once when HF_HUB_OFFLINE is set)."""
    if env_true("HF_HUB_OFFLINE"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False
