"""The machinery of `benchmarks/gpu_checks.sh` (its parts run in the CPU rehearsal, `make
gpu-rehearsal`, a CI step): the model's halves, deadlines that stop a part and what it
started, reruns that skip finished parts, the plan's checks, the results check and the
tables for the docs."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_bundle  # noqa: E402
import gpu_checks  # noqa: E402
import gpu_tables  # noqa: E402


def _bundle_with_model(tmp_path: Path, data: bytes) -> Path:
    """A bundle holding only the manifest and the two halves of ``data``."""
    bundle = tmp_path / "bundle"
    source = tmp_path / "model.gguf"
    source.write_bytes(data)
    model = gpu_bundle.split(source, bundle)
    (bundle / "base").mkdir(parents=True)
    manifest = {"format": gpu_bundle.FORMAT, "files": [], "model": model}
    (bundle / "base" / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def test_model_halves_park_and_join_back_to_the_same_bytes(tmp_path):
    data = os.urandom(10_001)
    bundle = _bundle_with_model(tmp_path, data)
    halves = [(bundle / f"model-{k}" / "model.part").read_bytes() for k in (1, 2)]
    assert [len(h) for h in halves] == [5001, 5000] and halves[0] + halves[1] == data
    dest = tmp_path / "parked"
    with pytest.raises(gpu_bundle.BundleError, match="run call 1 again first"):
        gpu_bundle.join(bundle, dest)
    gpu_bundle.park(bundle, 1, dest)
    (bundle / "model-1" / "model.part").unlink()  # call 2 carries only the second half
    path, digest = gpu_bundle.join(bundle, dest)
    assert path.read_bytes() == data and path.name == "model.gguf"
    assert digest == gpu_bundle.hashlib.sha256(data).hexdigest()


def test_a_changed_half_is_refused(tmp_path):
    bundle = _bundle_with_model(tmp_path, os.urandom(4096))
    gpu_bundle.park(bundle, 1, tmp_path / "parked")
    part = bundle / "model-2" / "model.part"
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(gpu_bundle.BundleError, match="sha256"):
        gpu_bundle.join(bundle, tmp_path / "parked")
    assert not (tmp_path / "parked" / "model.gguf").exists()


def test_build_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(gpu_bundle.BundleError, match="not made by this script"):
        gpu_bundle.build(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has ended


@pytest.mark.slow  # waits for its 3-second deadline
def test_deadline_stops_the_part_and_the_processes_it_started(tmp_path):
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('child', p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "logs" / "slow.log"
    start = time.monotonic()
    rc = gpu_checks.run_with_deadline([sys.executable, "-c", code], dict(os.environ), 3, log)
    assert rc is None and time.monotonic() - start < 20
    pid = int(log.read_text().split("child")[1].split()[0])
    for _ in range(50):  # the kill is delivered at once; give the kernel a moment
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid)
    assert (
        gpu_checks.run_with_deadline([sys.executable, "-c", "pass"], dict(os.environ), 30, log) == 0
    )


def _call(tmp_path: Path, **changes) -> gpu_checks.Call:
    setting = gpu_checks.replace_setting(gpu_checks.SETTINGS["rehearsal"], **changes)
    return gpu_checks.Call(setting, 1, tmp_path / "state", tmp_path / "out", tmp_path / "b")


def test_a_rerun_skips_finished_parts_and_never_starts_without_needs_or_time(tmp_path):
    c = _call(tmp_path)
    parts = {p.name: p for p in gpu_checks.PARTS}
    done = {"status": "done", "rows": [{"name": "versions"}], "seconds": 1.0}
    gpu_checks.write_json(gpu_checks.result_path(c.state, "env"), done)
    assert gpu_checks.run_part(c, parts["env"], 5) == done  # no process started
    assert "results exist from an earlier run, skipped" in c.log_lines[-1]
    entry = gpu_checks.run_part(c, parts["study"], 5)
    assert entry == {"status": "not started", "reason": "needs model"}
    late = _call(tmp_path, call_limit_s=20)
    entry = gpu_checks.run_part(late, parts["nll_fp32"], 60)
    assert entry["status"] == "not started" and "left" in entry["reason"]
    assert not gpu_checks.result_path(c.state, "nll_fp32").exists()


def test_the_plan_fits_the_lease_and_bad_settings_are_refused():
    lines = "\n".join(gpu_checks.plan_lines(gpu_checks.SETTINGS["gpu"], need_bundle=False))
    assert "call 1 (limit" in lines and "call 2 (limit" in lines and "left to rerun" in lines
    plan = gpu_checks.budgets(gpu_checks.SETTINGS["gpu"])
    for call in (1, 2):
        total = sum(plan[p.name] for p in gpu_checks.PARTS if p.call == call)
        assert 0 < total <= gpu_checks.MAX_CALL_S
    rehearsal = gpu_checks.plan_lines(gpu_checks.SETTINGS["rehearsal"], need_bundle=False)
    assert sum("not rehearsed" in line for line in rehearsal) == len(gpu_checks.CUDA_ONLY)
    base = gpu_checks.SETTINGS["rehearsal"]
    bad = [
        ({"perf": {**base.perf, "window": base.perf["seq_len"]}}, "perf.window"),
        ({"study": {**base.study, "max_steps": 99}}, "study.max_steps"),
        ({"call_limit_s": 10}, "exceed the call limit"),
        ({"skipped": {"nope": "x"}}, "unknown parts"),
    ]
    for changes, message in bad:
        with pytest.raises(gpu_checks.PlanError, match=message):
            gpu_checks.validate(gpu_checks.replace_setting(base, **changes))


def test_train_step_flops_count_checkpointing_and_attention():
    shape = gpu_checks._shapes()["llama-1b"]
    n = 4096
    body, head = gpu_checks._llama_params(shape)
    plain = gpu_checks.train_step_flops(shape, n, checkpointing=False)
    ckpt = gpu_checks.train_step_flops(shape, n, checkpointing=True)
    attn = 2.0 * n * n * shape.hidden * shape.layers
    assert plain == pytest.approx(6 * body * n + 8 * head * n + 3.5 * attn)
    assert ckpt - plain == pytest.approx(2 * body * n + attn)
    # Llama-3.2-1B: 1.24B parameters with its tied 128256 x 2048 embedding
    assert (body + head) / 1e9 == pytest.approx(1.236, abs=0.01)


def _results(setting: str = "gpu") -> dict:
    """A complete results file with made-up figures, as the parts would write it."""
    s = gpu_checks.SETTINGS[setting]
    parts: dict = {}
    for p in gpu_checks.PARTS:
        if p.name in s.skipped:
            parts[p.name] = {"status": "not rehearsed", "reason": s.skipped[p.name]}
            continue
        rows = []
        for name in gpu_checks.expected_rows(p.name, s):
            row = {"name": name, "value_err": 1e-7, "ok": True}
            rows.append(row)
        parts[p.name] = {"status": "done", "rows": rows, "info": {}}
    return {
        "format": gpu_checks.FORMAT,
        "setting": setting,
        "goals": gpu_checks.GOALS,
        "parts": parts,
    }


def test_results_check_flags_missing_rows_non_finite_figures_and_failed_checks():
    s = gpu_checks.SETTINGS["rehearsal"]
    results = _results("rehearsal")
    assert gpu_checks.check_results(results, s) == []
    results["parts"]["parity"]["rows"][1]["loss_err"] = math.nan
    results["parts"]["nll_fp32"]["rows"][0]["ok"] = False
    results["parts"]["perf_time"]["rows"].pop(0)
    results["parts"]["study"] = {"status": "deadline"}
    results["parts"]["nll_bf16"] = {"status": "not run yet"}
    problems = gpu_checks.check_results(results, s)
    assert problems == [
        "nll_fp32: row chunked fp32 failed its check",
        "nll_bf16: should be listed as not rehearsed",
        "parity: row dense-self has a non-finite figure",
        "perf_time: rows missing ['uniform']",
        "study: status deadline",
    ]


def _gpu_results() -> dict:
    """Made-up figures of every table, in the shapes the parts write."""
    paths = ("uniform", "dense-self", "dense-precomputed", "sparse-self")
    step = dict(zip(paths, (2.0, 2.4, 2.1, 2.2)))
    scoring = dict(zip(paths, (0.0, 0.3, 0.0, 0.3)))
    perf = [
        {
            "name": p,
            "step_s": step[p],
            "x_uniform": step[p] / 2.0,
            "scoring_s": scoring[p],
            "scoring_x_forward": scoring[p] / 0.5,
        }
        for p in paths
    ]
    perf += [
        {"name": "forward", "seconds": 0.5, "x_forward": 1.0},
        {"name": "short_context_nll", "seconds": 0.35, "x_forward": 0.7},
        {"name": "release emulation", "seconds": 3.15, "x_forward": 6.3},
        {"name": "windows agree", "max_abs_nats": 0.01, "ok": True},
    ]
    versions = {
        "name": "versions",
        "date": "2026-12-06 12:00 UTC",
        "card": "NVIDIA H100 80GB HBM3",
        "card_memory_gib": 79.2,
        "driver": "580.159.04",
        "cuda": "13.0",
        "python": "3.12.3",
        "torch": "2.11.0",
        "transformers": "5.17.0",
        "accelerate": "1.15.0",
        "datasets": "5.2.0",
        "triton": "3.6.0",
        "cut-cross-entropy": "25.1.1",
    }
    err = {"value_err": 1e-7, "dhidden_err": 2e-7, "dweight_err": 3e-7, "tol": 1e-5, "ok": True}
    done = {"status": "done", "info": {}}
    study_rows = [
        {
            "name": "context check",
            "start_nll_inside": 3.1,
            "start_nll_beyond": 3.0,
            "start_gain_beyond": 0.2,
            "key_share": 0.004,
        },
        {
            "name": "dense:0.75 (self) / all targets",
            "baseline": 3.0,
            "run_value": 2.99,
            "diff": -0.01,
            "low": -0.02,
            "high": 0.001,
            "targets": 9000,
            "inside_noise": True,
        },
    ]
    return {
        "format": gpu_checks.FORMAT,
        "setting": "gpu",
        "goals": gpu_checks.GOALS,
        "parts": {
            "env": {**done, "rows": [versions]},
            "nll_fp32": {**done, "rows": [{"name": "chunked fp32", **err}]},
            "nll_bf16": {"status": "deadline"},
            "perf_time": {
                "status": "done",
                "rows": perf,
                "info": {
                    "model": "llama-1b (1,236M parameters, random weights)",
                    "tokens": 32768,
                    "window": 8192,
                    "stride": 6144,
                    "dtype": "bf16",
                    "attn": "sdpa",
                    "gradient_checkpointing": True,
                    "repeats": 3,
                    "warmup": 1,
                },
            },
            "perf_memory": {
                **done,
                "rows": [
                    {"name": p, "peak_gib": 11.0 + i, "step_extra_gib": 2.0}
                    for i, p in enumerate(paths)
                ],
            },
            "study": {
                "status": "done",
                "rows": study_rows,
                "info": {
                    "tokens": 32768,
                    "window": 8192,
                    "steps": 24,
                    "held_out_sequences": 9,
                    "held_out_plays": list(range(8)),
                },
            },
        },
    }


def test_tables_show_every_row_the_goals_and_what_did_not_run():
    results = _gpu_results()
    text = gpu_tables.render(results)
    assert "Measured 2026-12-06 12:00 UTC on NVIDIA H100 80GB HBM3, 79.2 GiB" in text
    assert "torch 2.11.0, transformers 5.17.0" in text
    assert "| chunked fp32 | 1.0e-07 | 2.0e-07 | 3.0e-07 | 1e-05 | pass |" in text
    assert "*nll_bf16: not measured (deadline).*" in text
    assert "| dense-self | 2.400 s | 1.20 | 12.0 GiB | 0.300 s | 0.60 |" in text
    # goals: 1.20 > 1.15 (not met), peak 14 GiB > 12 (not met), scoring 0.6 <= 0.8 (met)
    assert "| Dense self step x uniform | <= 1.15 | 1.20 | **no** |" in text
    assert "| peak memory, any path | <= 12 GiB | 14.0 GiB | **no** |" in text
    assert "| self-scoring x one forward | <= 0.8 | 0.60 | yes |" in text
    assert "(window loop, full logits, entropy) | 3.150 s | 6.30 |" in text
    assert (
        "| dense:0.75 (self) | all targets | 9,000 | 3.000 | 2.990 | -0.010 [-0.020, +0.001] |"
        in text
    )
    assert "one seed" in text and "*loss_head: not measured (missing).*" in text
    assert gpu_tables.missing_rows(results) == []
    results["parts"]["perf_time"]["rows"][4]["name"] = "something new"
    with pytest.raises(KeyError):
        gpu_tables.render(results)


def test_docs_block_is_replaced_only_with_gpu_results(tmp_path):
    page = tmp_path / "performance.md"
    page.write_text(f"# P\n\nbefore\n{gpu_tables.BEGIN}\nold\n{gpu_tables.END}\nafter\n")
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_gpu_results()))
    assert gpu_tables.main([str(results), "--docs", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# P\n\nbefore\n") and text.endswith(f"{gpu_tables.END}\nafter\n")
    assert "old" not in text and "NVIDIA H100" in text
    rehearsal = {**_gpu_results(), "setting": "rehearsal"}
    results.write_text(json.dumps(rehearsal))
    assert gpu_tables.main([str(results), "--docs", str(page)]) == 2
    assert page.read_text() == text  # unchanged
    bare = tmp_path / "bare.md"
    bare.write_text("no block\n")
    results.write_text(json.dumps(_gpu_results()))
    assert gpu_tables.main([str(results), "--docs", str(bare)]) == 2
    assert bare.read_text() == "no block\n"


def test_the_docs_page_has_the_block_and_says_no_gpu_figure_yet():
    page = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
    text = page.read_text(encoding="utf-8")
    assert text.count(gpu_tables.BEGIN) == 1 and text.count(gpu_tables.END) == 1
    block = text.split(gpu_tables.BEGIN)[1].split(gpu_tables.END)[0]
    assert gpu_tables.NOT_MEASURED in block


def test_study_labels_are_the_labels_tokenweight_study_gives_its_runs():
    from tokenweight.workflows.study import RunSpec

    labels = tuple(RunSpec(**run).label() for run in gpu_checks.STUDY_RUNS)
    assert labels == gpu_checks.STUDY_LABELS
