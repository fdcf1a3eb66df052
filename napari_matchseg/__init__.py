"""napari-matchseg: annotate medical images by reference.

The core (bank, retrieval, weights, I/O) imports no Qt and works from Python and the ``matchseg``
command; the napari widgets are a thin layer on top.
"""

__version__ = "0.1.0"

from .bank import Reference, ReferenceBank  # noqa: E402
from .errors import MatchsegError  # noqa: E402

__all__ = ["ReferenceBank", "Reference", "MatchsegError", "__version__"]
