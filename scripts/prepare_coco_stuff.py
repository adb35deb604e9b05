"""Convert COCO-Stuff stuffthingmaps to the 171-class layout maft reads (benchmarks.json).

Runs :mod:`maft.tools.prepare_coco_stuff` (installed as a console script too).
"""

from maft.tools.prepare_coco_stuff import *  # noqa: F403 - the tool's public functions, for tests and imports
from maft.tools.prepare_coco_stuff import main

if __name__ == "__main__":
    raise SystemExit(main())
