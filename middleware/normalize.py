"""One text normalisation for every safety filter (DESIGN.md, "Secure by default").

The code and its description live in the core, :mod:`omni_agent.text` (the markup parser
needs it too); this module re-exports it, so ``from omni_agent.middleware.normalize import
normalize`` keeps working.
"""

from __future__ import annotations

from omni_agent.text import INVISIBLE, Normalized, is_normal, normalize, visible

__all__ = ["Normalized", "normalize", "is_normal", "visible", "INVISIBLE"]
