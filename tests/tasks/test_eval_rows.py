"""Every evaluation row of a run costs the same work: no timing, the work itself is counted.

The frozen-CLIP rows and the MAFT row run with the same trainer settings (the MAFT stage's own
precision applies to its training only), share one text embedding per vocabulary, computed
before the first row (not inside it), and run with the run's long-lived objects frozen out of
the garbage collector. The merge rows bound each CLIP pass (same embeddings up to rounding).
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from maft import runner
from maft.config import compose
from maft.models.clip.text import TextClassifier
from maft.models.segmenter import ZeroShotSegmenter
from maft.omp import SPINCOUNT, bounded_spin

ROWS = ["frozen_merge", "frozen_ip_clip", "maft"]


def test_rows_share_text_embeddings_precision_and_a_quiet_collector(
    tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose(
        [
            *tiny_overrides,
            f"evaluate=[{','.join(ROWS)}]",
            "+stage_trainer.maft.precision=bf16-mixed",
        ],
        output_dir=tmp_path / "run",
    )
    encodes: list[tuple[int, tuple[str, ...]]] = []  # (TextClassifier id, names) per real encode
    encode = TextClassifier.encode

    def counted(self: TextClassifier, names: tuple[str, ...]) -> torch.Tensor:
        encodes.append((id(self), tuple(names)))
        return encode(self, names)

    monkeypatch.setattr(TextClassifier, "encode", counted)
    tasks: list[Any] = []
    build_maft_task = runner.build_maft_task

    def keep_task(*args: Any, **kwargs: Any) -> Any:
        tasks.append(build_maft_task(*args, **kwargs))
        return tasks[-1]

    monkeypatch.setattr(runner, "build_maft_task", keep_task)
    precision: dict[str, str] = {}
    build_trainer = runner.build_trainer

    def record_precision(cfg_: Any, stage: str, *args: Any, **kwargs: Any) -> Any:
        trainer = build_trainer(cfg_, stage, *args, **kwargs)
        precision[stage] = str(trainer.precision)
        return trainer

    monkeypatch.setattr(runner, "build_trainer", record_precision)
    rows: list[dict[str, Any]] = []
    evaluate = runner.evaluate

    def record_row(task: Any, dm: Any, cfg_: Any, mode: str) -> Any:
        before = len(encodes)
        row = {"mode": mode, "frozen objects": gc.get_freeze_count()}
        out = evaluate(task, dm, cfg_, mode)
        rows.append({**row, "encodes inside": len(encodes) - before})
        return out

    monkeypatch.setattr(runner, "evaluate", record_row)
    frozen_before = gc.get_freeze_count()
    summary = runner.run_train(cfg)

    assert set(summary["results"]) == set(ROWS)
    assert [r["mode"] for r in rows] == ROWS
    (task,) = tasks
    own = [names for owner, names in encodes if owner == id(task.text)]
    assert own == [tuple(task.vocab.names)]  # one vocabulary, encoded once for every row
    assert all(r["encodes inside"] == 0 for r in rows)  # before the first row, not inside it
    assert summary["timings_s"]["eval setup"] >= 0.0
    eval_precision = {precision[f"test_{row}"] for row in ROWS}
    assert eval_precision == {str(cfg.trainer.precision)}  # 32-true for frozen and MAFT rows
    assert precision["maft"] == "bf16-mixed"  # the stage setting: MAFT training only
    assert all(r["frozen objects"] > frozen_before for r in rows)
    assert gc.get_freeze_count() == frozen_before  # the run leaves the collector as it was


def test_evaluation_rows_keeps_what_the_caller_froze(
    tiny_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Data:
        test_vocabularies = [tiny_task.vocab]

        def setup(self, stage: str) -> None:
            """Nothing to build."""

    cfg = compose(["trainer=smoke"])
    monkeypatch.setattr(gc, "get_freeze_count", lambda: 7)  # someone else froze objects
    unfrozen: list[bool] = []
    monkeypatch.setattr(gc, "unfreeze", lambda: unfrozen.append(True))
    timings: dict[str, float] = {}
    with runner.evaluation_rows(tiny_task, Data(), cfg, timings):
        pass
    assert not unfrozen and "eval setup" in timings


def test_merge_passes_are_bounded_and_change_no_embedding(tiny_task: Any) -> None:
    tiny_task.eval()
    hp = tiny_task.hparams

    def merge(chunk: int) -> ZeroShotSegmenter:
        return ZeroShotSegmenter(
            tiny_task.generator,
            tiny_task.text,
            tiny_task.teacher_visual,
            tiny_task.norm,
            start_layer=tiny_task.start_layer,
            input_size=tiny_task.input_size,
            classifier="mask_crop",
            merge_variant=hp.merge_variant,
            lambda_=tiny_task.lambda_,
            form=tiny_task.form,
            drop_invalid=hp.drop_invalid,
            mask_align_corners=hp.mask_align_corners,
            merge_chunk=chunk,
        )

    passes: list[int] = []
    hook = tiny_task.teacher_visual.register_forward_pre_hook(
        lambda _, args: passes.append(int(args[0].shape[0]))
    )
    images = torch.randint(0, 256, (3, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    text = tiny_task.text_embeddings(tiny_task.vocab)
    seen = tiny_task.vocab.seen
    n = tiny_task.generator.num_queries
    try:
        bounded = merge(6)(images, text, seen)
        assert passes and max(passes) <= 6 and sum(passes) == 3 * n  # 2 proposals x 3 images
        passes.clear()
        whole = merge(10**6)(images, text, seen)
        assert passes == [3 * n]  # one pass of every sub-image
    finally:
        hook.remove()
    # float32 rounding at most (the sizes of the matrix products differ); bitwise on the world
    torch.testing.assert_close(bounded.clip_probs, whole.clip_probs, rtol=0, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(bounded.labels, whole.labels))


def test_bounded_spin_is_set_only_before_torch_and_never_over_the_users_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.setenv(var, "unset")  # restored as it was after the test
        monkeypatch.delenv(var)
    assert not bounded_spin()  # torch is loaded here: OpenMP has read its settings already
    assert "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")  # as in a command line before its first import
    assert bounded_spin()
    assert os.environ["GOMP_SPINCOUNT"] == SPINCOUNT
    assert "OMP_WAIT_POLICY" not in os.environ  # libgomp's policy stays its default
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    assert not bounded_spin() and os.environ["GOMP_SPINCOUNT"] == "5"  # the user's count
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert not bounded_spin()  # the user's policy is kept, with no count beside it
    assert "GOMP_SPINCOUNT" not in os.environ
