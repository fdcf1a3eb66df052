"""napari widgets: a thin Qt layer over the core (bank, retrieval, proposers)."""

from .annotator import ReferenceAnnotator
from .writer import write_labels

__all__ = ["ReferenceAnnotator", "write_labels"]
