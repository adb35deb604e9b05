"""Build PASCAL-Context 459 (uint16 TIFF) and 59 (PNG) labels in the layout maft reads.

Runs :mod:`maft.tools.prepare_pascal_context` (installed as a console script too).
"""

from maft.tools.prepare_pascal_context import *  # noqa: F403 - the tool's public functions, for tests and imports
from maft.tools.prepare_pascal_context import main

if __name__ == "__main__":
    raise SystemExit(main())
