"""scripts/bench_release.py runs end to end at tiny sizes and writes every entry."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_release.py"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("_script_bench_release", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _timings(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (path, value) whose key is a timing: ``seconds``, ``seconds_min`` or ``times_s``."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("seconds", "seconds_min") and not isinstance(value, str):
                found.append((f"{path}.{key}", value))
            elif key == "times_s":
                found.extend((f"{path}.{key}", v) for v in value)
            else:
                found.extend(_timings(value, f"{path}.{key}"))
    return found


def test_quick_run_writes_every_entry(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = _load_script().main(["--quick", "--warmup", "0", "--real-text", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["preset"] == "quick"
    assert written["deform_attn"]["forward"].keys() == result["deform_attn"]["forward"].keys()
    for key in ("machine", "torch", "threads", "device", "dtype", "date"):
        assert key in written, key

    deform = written["deform_attn"]
    for phase in ("forward", "forward_backward"):
        assert {"freeseg", "lite", "ratio_lite_over_freeseg"} <= deform[phase].keys()
        for name in ("freeseg", "lite"):
            assert "peak_mib" in deform[phase][name] and deform[phase][name]["params"] > 0
    assert "seconds" in deform["core_op"] and deform["core_op"]["shapes"]["value"]

    gen = written["generator"]
    assert {"freeseg", "lite", "ratio_lite_over_freeseg", "settings"} <= gen.keys()
    assert gen["freeseg"]["params"] > 0 and gen["lite"]["params"] > 0

    model = written["released_model"]["maft-tiny"]
    assert {"freeseg", "lite", "ratio_lite_over_freeseg", "clip"} <= model.keys()
    assert model["freeseg"]["proposals"] > 0 and model["text_embeddings_s"] > 0

    timings = _timings(written)
    # 5 deform measurements + 2 generators + 2 whole models, each with median, min and one run
    assert len(timings) >= 9 * 3
    bad = [(p, v) for p, v in timings if not (isinstance(v, float) and math.isfinite(v) and v > 0)]
    assert not bad, bad
