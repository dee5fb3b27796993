"""The segmenter lives in the core now (:mod:`omni_agent.segmenter`): the agent cuts every
turn's text with it, so it is no plug-in. This module keeps the old import path working::

    from omni_agent.middleware.segmenter import Segmenter   # same class as omni_agent.segmenter
"""

from omni_agent.segmenter import Segmenter, SegmenterProtocol

__all__ = ["Segmenter", "SegmenterProtocol"]
