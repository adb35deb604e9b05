"""`python -m maft.predict ckpt_path=... image=... vocabulary=[...]`: segment your own images."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from maft.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def _main(cfg: DictConfig) -> None:
    from maft.runner import cli_guard, run_predict  # heavy imports only when a job really runs

    with cli_guard():
        run_predict(cfg)


def main() -> None:
    """Console-script entry point (`maft-predict`): unquoted non-ASCII lists get a clear hint."""
    from maft.data.vocabulary import unquoted_override_error

    problem = unquoted_override_error(sys.argv[1:])
    if problem:
        print(f"maft: error: ConfigError: {problem}", file=sys.stderr)
        sys.exit(2)
    if any(arg.startswith("output_dir=") for arg in sys.argv[1:]):
        # outputs go where asked and nowhere else: no Hydra run folder, .hydra/ or log file
        sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    _main()


if __name__ == "__main__":
    main()
