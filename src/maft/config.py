"""Where the Hydra configs live, and `compose()`: resolve configs exactly like the CLI does.

The configs are the top-level `conf/` folder of a checkout; the wheel ships the same files
as `maft/conf` (package data), so `python -m maft.train` works from a checkout and after a plain
`pip install .`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, open_dict

from maft.errors import ConfigError
from maft.schema import register_configs

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """Absolute path of the Hydra configs (installed `maft/conf`, else the checkout's `conf/`)."""
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise ConfigError(
        f"maft's Hydra configs were not found (looked in {_PACKAGE_DIR / 'conf'} and "
        f"{_PACKAGE_DIR.parents[1] / 'conf'}); reinstall the package"
    )


CONFIG_DIR = str(config_dir())
register_configs()  # the typed schemas the YAML files extend (maft.schema)


def _choice(group: str) -> str | None:
    """The option Hydra composed for ``group`` (e.g. ``voc_15_5`` for split), when known."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().runtime.choices.get(group))
    except (ValueError, AttributeError):
        return None


def check_maft_selection(keep: str, every: int | None) -> None:
    """``model.maft.keep`` is last or best; best needs a positive ``val_every``."""
    if keep not in ("last", "best"):
        raise ConfigError(f"model.maft.keep={keep!r}: use last or best")
    if every is not None and int(every) <= 0:
        raise ConfigError(f"model.maft.val_every={every}: give a positive number of steps or null")
    if keep == "best" and every is None:
        raise ConfigError(
            "model.maft.keep=best selects on the validation curve: set model.maft.val_every "
            "(steps between validations on data.val_split)"
        )


def check_config(cfg: DictConfig) -> None:
    """Cross-key checks Hydra's typed merge cannot make: a split file of another benchmark,
    MAFT's length selection (``model.maft.keep`` / ``val_every``).

    Raises ``ConfigError`` with one line naming the keys.
    """
    maft = (cfg.get("model") or {}).get("maft")
    data = cfg.get("data")
    if maft is not None:
        keep = str(maft.get("keep", "last"))
        check_maft_selection(keep, maft.get("val_every"))
        if keep == "best" and data and not data.get("test_sets"):
            val = data.get("val_split", "val")
            if (data.get("test_split") or val) == val:
                raise ConfigError(
                    f"model.maft.keep=best would choose the MAFT length on the split it is tested "
                    f"on (data.val_split={val} is also the test split): give a held-out "
                    "validation split (data.val_split=<folder>, data.test_split=val) or keep=last"
                )
    split = cfg.get("split")
    if not split or not data:
        return
    owner, bench = split.get("benchmark"), data.get("benchmark")
    if owner and bench and owner != bench:
        raise ConfigError(
            f"split={_choice('split') or split.get('name')} is a split of {owner}; it does not "
            f"fit data={bench}: use split=default ({bench}'s own split) or split=all_seen"
        )


def compose(
    overrides: Sequence[str] = (),
    config_name: str = "train",
    output_dir: str | Path | None = None,
) -> DictConfig:
    """Compose a config with Hydra's resolution rules (as the CLI would), for tests and tools.

    ``output_dir`` replaces ``paths.output_dir`` (the CLI takes it from Hydra's run directory).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        elif "paths" in cfg:
            cfg.paths.output_dir = str(Path(cfg.hydra.run.dir).resolve())
        del cfg["hydra"]
    check_config(cfg)
    return cfg
