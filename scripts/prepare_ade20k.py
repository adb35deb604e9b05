"""Convert ADE20K-Full (847 classes) or ADEChallengeData2016 (150) to the layouts maft reads.

Runs :mod:`maft.tools.prepare_ade20k` (installed as a console script too).
"""

from maft.tools.prepare_ade20k import *  # noqa: F403 - the tool's public functions, for tests and imports
from maft.tools.prepare_ade20k import main

if __name__ == "__main__":
    raise SystemExit(main())
