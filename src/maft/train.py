"""`python -m maft.train experiment=NAME [overrides]`: train the experiment's stages, then test.

Returns the run's headline metric (``<row>/<benchmark>/hiou``, see :func:`maft.runner.headline`),
the value a Hydra sweeper such as Optuna optimises. Also home of the run-folder rules
(:func:`run_folder_problem`, :class:`RunFolderGuard`): they run before Hydra writes anything, so
they import nothing heavy.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, read_write
from omegaconf.errors import OmegaConfBaseException

from maft.config import CONFIG_DIR, check_config
from maft.errors import ConfigError

#: Files that mark a folder as holding a run's results (never written over).
RESULT_FILES = ("metrics.json", "report.md")


def writable_problem(out_dir: str | Path, setting: str = "output_dir") -> str | None:
    """Why ``out_dir`` cannot be created or written (``setting``: the key to change), or None."""
    out_dir = Path(out_dir)
    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        return (
            f"output folder {out_dir} is not writable (checked {probe}); choose another "
            f"{setting}=..."
        )
    return None


def check_writable(out_dir: str | Path, setting: str = "output_dir") -> None:
    """ConfigError now, before any work, when ``out_dir`` cannot be created or written."""
    problem = writable_problem(out_dir, setting)
    if problem:
        raise ConfigError(problem)


def checkpoints_in(out: Path) -> list[str]:
    """The stage checkpoints in a run folder, relative to it (``checkpoints/<stage>/*.ckpt``)."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p.relative_to(out).as_posix() for p in root.glob("*/*.ckpt"))


def run_folder_problem(out: str | Path, command: str = "train", resume: bool = False) -> str | None:
    """Why the run folder ``out`` cannot take this run, or None when it can.

    A folder holding results (``metrics.json``, ``report.md``, pictures) is never written over;
    a training run resuming (``ckpt_path=last``) needs a stage checkpoint there, and a fresh
    training run or an evaluation must not find another run's checkpoints.
    """
    out = Path(out)
    unwritable = writable_problem(out, "hydra.run.dir")
    if unwritable:
        return unwritable
    held = [name for name in RESULT_FILES if (out / name).exists()]
    pictures = out / "pictures"
    if pictures.is_dir() and any(pictures.iterdir()):
        held.append("pictures/")
    checkpoints = checkpoints_in(out)
    fresh = "omit hydra.run.dir for a fresh folder, or name a new one"
    if held and resume:
        return (
            f"ckpt_path=last: the run in {out} has finished ({', '.join(held)}); nothing to "
            "resume. Evaluate its checkpoints with maft.eval, or start a new run"
        )
    if held:
        return (
            f"{out} already holds the results of another run ({', '.join(held)}); nothing was "
            f"written: {fresh}"
        )
    if command == "train" and resume and not checkpoints:
        where = "does not exist" if not out.exists() else "holds no stage checkpoint"
        return (
            f"ckpt_path=last: nothing to resume in {out} (the folder {where}; expected "
            "checkpoints/<stage>/last.ckpt or final.ckpt). Check hydra.run.dir, or start a "
            "fresh run without ckpt_path=last"
        )
    if checkpoints and not resume:
        what = "an unfinished run" if command == "train" else "another run"
        hint = "resume it with ckpt_path=last, or " if command == "train" else ""
        return f"{out} holds the checkpoints of {what} ({checkpoints[0]}, ...): {hint}{fresh}"
    return None


def _claim_fresh_folder(path: Path) -> Path:
    """``path``, or ``path_1``, ``path_2``... : the first that did not exist (created now)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        candidate = path if i == 0 else path.with_name(f"{path.name}_{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"no free run folder next to {path}")


class RunFolderGuard(HydraCallback):
    """Hydra callback: checks the run folder before Hydra writes anything into it.

    An unnamed folder (``hydra.run.dir`` from the config, e.g. ``outputs/<task>/<time>``) is
    always a fresh one (a suffix is added when it exists). A folder named on the command line
    must suit the run (:func:`run_folder_problem`); otherwise the command stops with exit status
    2 and the folder is left as it was.
    """

    def __init__(self, command: str = "train") -> None:
        self.command = command

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Pick or check the run folder (rank 0 only: DDP ranks reuse rank 0's folder)."""
        if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
            return
        hydra_cfg = config.hydra
        named = any(str(o).split("=", 1)[0] == "hydra.run.dir" for o in hydra_cfg.overrides.hydra)
        resume = self.command == "train" and config.get("ckpt_path") == "last"
        try:
            run_dir = Path(str(hydra_cfg.run.dir))
        except OmegaConfBaseException:  # an interpolation only the job can resolve
            return
        problem = None
        if resume and not named:
            problem = (
                "ckpt_path=last resumes the run in the folder named by hydra.run.dir: add "
                "hydra.run.dir=<its folder> (e.g. outputs/<task>/<time>)"
            )
        elif not named:
            try:
                fresh = _claim_fresh_folder(run_dir)
            except OSError as err:  # a read-only outputs/ (or a file in the way)
                fresh, problem = (
                    run_dir,
                    (
                        writable_problem(run_dir, "hydra.run.dir")
                        or f"cannot create the run folder {run_dir} ({err}); choose another "
                        "hydra.run.dir=..."
                    ),
                )
            if fresh != run_dir:
                with read_write(hydra_cfg.run):
                    hydra_cfg.run.dir = str(fresh)
        else:
            problem = run_folder_problem(run_dir, self.command, resume)
        if problem:
            print(f"maft: error: ConfigError: {problem}", file=sys.stderr)
            sys.exit(2)


#: Hydra's command-line flags that take the next argument as their value.
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
_VALUE_FLAGS |= {"--config-dir", "-cd", "--experimental-rerun"}
_INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def _shell(override: str) -> str:
    """``override`` quoted for a POSIX shell: in double quotes unless the shell would expand it."""
    return shlex.quote(override) if any(c in override for c in '"$`\\!') else f'"{override}"'


def _quoted(key: str, value: str) -> str:
    """``key=value`` with the value quoted for Hydra (each item of a ``[...]`` list)."""
    value = value.strip()

    def quote(text: str) -> str:
        return f"'{text}'" if "'" not in text else f'"{text}"'

    if value.startswith("[") and value.endswith("]"):
        items = [quote(v.strip().strip("'\"")) for v in value[1:-1].split(",") if v.strip()]
        return f"{key}=[{','.join(items)}]"
    return f"{key}={quote(value)}"


def override_quoting_error(argv: Sequence[str]) -> str | None:
    """One line for the first command-line override Hydra cannot parse: how to quote it.

    Hydra reads spaces (an unquoted value the shell split in two), non-ASCII letters and
    characters such as ``( ) [ ] & # ' ~ =`` in a value only inside quotes, and otherwise stops
    with a bare lexer error. ``None`` when every override parses.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from maft.data.vocabulary import unquoted_override_error

    parser, prev, skip = None, None, False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            skip = "=" not in arg and (
                flag in _VALUE_FLAGS or (flag in ("--info", "-i") and nxt in _INFO_VALUES)
            )
            prev = None
            continue
        parser = parser or OverridesParser.create()
        try:
            parser.parse_override(arg)
            prev = arg if "=" in arg else None
            continue
        except HydraException:
            pass
        if "=" not in arg and arg.startswith(("+", "~")):
            return f"the override {arg!r} has no value: write {arg}=<value>"
        if "=" not in arg:  # a piece of the previous value, split off by the shell at a space
            if prev is None:
                return (
                    f"cannot read the command-line argument {arg!r}: overrides are key=value. "
                    "A value with spaces must stay one argument: quote the whole override for "
                    'the shell, e.g. "data.root=/path/with spaces"'
                )
            rest = []
            for piece in argv[i:]:
                if "=" in piece or piece.startswith("-"):
                    break
                rest.append(piece)
            whole = " ".join([prev, *rest])
            try:
                parser.parse_override(whole)
            except HydraException:
                whole = _quoted(*whole.split("=", 1))
            return (
                f"cannot read the override {prev!r} followed by {' '.join(rest)!r}: the shell "
                "split a value with spaces in two. Quote the whole override for the shell: "
                f"{_shell(whole)}"
            )
        if not arg.isascii():
            problem = unquoted_override_error([arg])
            if problem:
                return problem
        return (
            f"cannot read the override {arg!r}: Hydra reads spaces, non-ASCII letters and "
            "characters such as ( ) [ ] & # ' ~ = in a value only inside quotes. Quote the "
            f"value, and the whole override for the shell: {_shell(_quoted(*arg.split('=', 1)))}"
        )
    return None


def exit_on_unreadable_overrides(argv: Sequence[str]) -> None:
    """Exit with status 2 and one line when an override cannot be parsed (before Hydra starts)."""
    problem = override_quoting_error(argv)
    if problem:
        print(f"maft: error: ConfigError: {problem}", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from maft.offline import check_weights_available
    from maft.runner import cli_guard, interrupt_guard, run_train, update_latest_link

    with cli_guard(), interrupt_guard(cfg.paths.output_dir):
        check_config(cfg)  # a split of another benchmark: one line, before anything else
        check_weights_available(cfg)  # offline: fail now with a remedy, not after the data step
        summary = run_train(cfg)  # heavy imports only when a job really runs
    if HydraConfig.get().mode == RunMode.RUN:
        link = update_latest_link(cfg)
        if link is not None:
            print(f"latest: {link} -> {cfg.paths.output_dir}")
    return float(summary["headline"])


def main() -> None:
    """Console-script entry point (`maft-train`): unparsable overrides get a quoting hint."""
    from maft.omp import bounded_spin

    bounded_spin()  # before torch loads OpenMP (see maft.omp)
    exit_on_unreadable_overrides(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
