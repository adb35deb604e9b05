"""Convert the released MAFT checkpoint (detectron2 .pth) into weights maft loads.

Runs :mod:`maft.tools.convert_maft_checkpoint` (installed as a console script too).
"""

from maft.tools.convert_maft_checkpoint import *  # noqa: F403 - the tool's public functions, for tests and imports
from maft.tools.convert_maft_checkpoint import main

if __name__ == "__main__":
    raise SystemExit(main())
