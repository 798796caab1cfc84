"""``python -m spatialforge.processing.cli``: the ``spatialforge`` command."""

from . import main

main()
