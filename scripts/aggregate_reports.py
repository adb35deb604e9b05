"""Turn a Hydra multirun folder into one Markdown table (rows = runs, columns = metrics).

Runs :mod:`maft.tools.aggregate_reports` (installed as a console script too).
"""

from maft.tools.aggregate_reports import *  # noqa: F403 - the tool's public functions, for tests and imports
from maft.tools.aggregate_reports import main

if __name__ == "__main__":
    raise SystemExit(main())
