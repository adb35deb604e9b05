"""`python -m maft.predict ckpt_path=... image=... vocabulary=[...]`: segment your own images."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from maft.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def _main(cfg: DictConfig) -> None:
    from maft.runner import cli_guard, run_predict  # heavy imports only when a job really runs

    with cli_guard():
        run_predict(cfg)


def main() -> None:
    """Console-script entry point (`maft-predict`)."""
    _main()


if __name__ == "__main__":
    main()
