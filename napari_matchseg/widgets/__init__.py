"""napari widgets: a thin Qt layer over the core (bank, retrieval, proposers)."""

from .annotator import ReferenceAnnotator
from .writer import write_labels, write_labels_volume

__all__ = ["ReferenceAnnotator", "write_labels", "write_labels_volume"]
