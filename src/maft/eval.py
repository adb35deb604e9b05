"""`python -m maft.eval experiment=NAME ckpt_path=...`: test a checkpoint, write the reports.

Returns the run's headline metric (see :func:`maft.runner.headline`), for Hydra sweepers.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from maft.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _main(cfg: DictConfig) -> float:
    from maft.runner import cli_guard, run_eval  # heavy imports only when a job really runs

    with cli_guard():
        summary = run_eval(cfg)
    return float(summary["headline"])


def main() -> None:
    """Console-script entry point (`maft-eval`): unparsable overrides get a quoting hint."""
    from maft.omp import bounded_spin
    from maft.train import exit_on_unreadable_overrides

    bounded_spin()  # before torch loads OpenMP (see maft.omp)
    exit_on_unreadable_overrides(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
