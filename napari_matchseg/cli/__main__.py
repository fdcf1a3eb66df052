"""``python -m napari_matchseg.cli``: the ``matchseg`` command."""

import sys

from . import main

sys.exit(main())
