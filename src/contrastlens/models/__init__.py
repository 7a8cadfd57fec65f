"""Model loading: hub ids, local folders, GGUF files, the demo catalog and tiny random models."""

from contrastlens.models.loaded import LoadedModel
from contrastlens.models.loading import load_model

__all__ = ["LoadedModel", "load_model"]
