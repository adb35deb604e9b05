"""Convert PASCAL VOC 2012 SegmentationClassAug to the 20-class layout maft reads.

Runs :mod:`maft.tools.prepare_voc` (installed as a console script too).
"""

from maft.tools.prepare_voc import *  # noqa: F403 - the tool's public functions, for tests and imports
from maft.tools.prepare_voc import main

if __name__ == "__main__":
    raise SystemExit(main())
