"""Frozen CLIP vs MAFT per proposal: mask + top-5 ``A^c`` classes side by side (the paper's figure).

Runs :mod:`maft.tools.show_proposals` (installed as a console script too).
"""

from maft.tools.show_proposals import *  # noqa: F403 - the tool's public functions, for tests and imports
from maft.tools.show_proposals import main

if __name__ == "__main__":
    raise SystemExit(main())
