"""`python -m maft.train experiment=NAME [overrides]`: train the experiment's stages, then test."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from maft.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _main(cfg: DictConfig) -> None:
    from maft.runner import cli_guard, run_train  # heavy imports only when a job really runs

    with cli_guard():
        run_train(cfg)


def main() -> None:
    """Console-script entry point (`maft-train`)."""
    _main()


if __name__ == "__main__":
    main()
