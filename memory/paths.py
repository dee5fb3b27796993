"""Where omni-agent keeps its data: ``$OMNI_AGENT_HOME`` or ``~/.cache/omni-agent``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_home", "default_data_dir", "DEFAULT_COLLECTION"]

DEFAULT_COLLECTION = "default"  # the collection `omni-agent ingest` fills and the default agent reads


def default_home() -> Path:
    """omni-agent's data root: ``$OMNI_AGENT_HOME`` or ``~/.cache/omni-agent``."""
    env = os.environ.get("OMNI_AGENT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "omni-agent"


def default_data_dir() -> Path:
    """The embedded Chroma's default directory: ``<home>/chroma``."""
    return default_home() / "chroma"
