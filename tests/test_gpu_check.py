"""scripts/gpu_check.py, the GPU day's one command, rehearsed on the CPU (issue 19).

`--device cpu` runs every step as the GPU day would, with only the device swapped and sizes cut: the real
cuda-marked tests (on the CPU), real training runs of each fast path, two real gloo ranks under torchrun, the real
benchmark. The CUDA-only fast paths (cudagraphs, tf32) are skipped with the reason. The budget tests run single
steps with tiny budgets.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, script

STEPS = ["environment", "cuda-tests"]
STEPS += [f"fast:{name}" for name in ("plain", "cudagraphs", "tf32", "bf16", "inductor", "deterministic")]
STEPS += ["two-ranks", "benchmark"]
CUDA_ONLY = {"fast:cudagraphs", "fast:tf32"}


def _check(tmp: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--out", str(tmp / "summary.json"), *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> tuple[int, str, dict]:
    tmp = tmp_path_factory.mktemp("rehearsal")
    proc = _check(tmp, "--budget-s", "1200")
    output, _ = proc.communicate(timeout=1500)
    return proc.returncode, output, json.loads((tmp / "summary.json").read_text())


def test_the_rehearsal_runs_every_gpu_step_in_order_cheap_steps_first(rehearsal):
    rc, output, summary = rehearsal
    assert rc == 0, output
    assert list(summary["steps"]) == STEPS and summary["rehearsal"] is True
    for name, step in summary["steps"].items():
        assert step["planned_s"] > 0
        if name in CUDA_ONLY:
            assert step["status"] == "skipped" and "needs CUDA" in step["reason"]
        else:
            assert step["status"] == "passed", (name, step)
            assert 0 <= step["seconds"] <= step["planned_s"] + 5
    facts = summary["steps"]["environment"]
    assert facts["torch"] and facts["gpus"] == 0 and isinstance(facts["bf16"], bool)


def test_the_rehearsal_reports_each_fast_paths_figures(rehearsal):
    _, _, summary = rehearsal
    steps = summary["steps"]
    for name in ("fast:plain", "fast:bf16", "fast:inductor", "fast:deterministic", "two-ranks"):
        step = steps[name]
        assert step["train_windows_timed"] >= 2  # the first window (warm-up, compiling) is not timed
        assert step["train_it_s"] > 0 and step["eval_s_per_1000"] > 0 and step["peak_memory_mb"] > 100
        assert (Path(step["run_dir"]) / "summary.json").exists()  # the run dirs are kept
        assert "eval_every=0" in step["command"]
    for name in ("fast:plain", "fast:deterministic"):  # the rehearsal's benchmark times these two
        assert steps[name]["train_x_serial"] > 0 and steps[name]["eval_x_serial"] > 0
    contenders = steps["benchmark"]["contenders"]
    assert set(contenders) == {"omniglot/serial", "omniglot/plain", "omniglot/deterministic"}
    for row in contenders.values():
        assert row["eval_x_serial"] > 0 and row["train_it_s"] > 0
    assert contenders["omniglot/serial"]["train_x_serial"] == 1.0


def test_the_cuda_tests_ran_on_the_rehearsal_device(rehearsal):
    _, _, summary = rehearsal
    tests = summary["steps"]["cuda-tests"]
    assert tests["passed"] >= 5 and tests["failed"] == 0
    assert tests["skip_reasons"] == ["CUDA only; this rehearsal runs the cuda tests on cpu"]


def test_the_summary_compares_with_every_cpu_table_of_the_docs(rehearsal):
    _, _, summary = rehearsal
    compared = dict(summary["compared_with_cpu"])
    assert "not comparable" in compared.pop("note")
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    assert set(compared) == set(script("gpu_check").cpu_figures())
    assert all(f"\n| {machine} | 2 |" in doc for machine in compared)
    assert len(compared) >= 3
    for ratios in compared.values():
        assert ratios["train_x"] > 0 and ratios["eval_x"] > 0


def test_a_step_past_its_budget_is_killed_with_its_whole_process_group(tmp_path):
    """torchrun's ranks are grandchildren of the check: a kill of the direct child alone leaves them running. The
    summary names the step as running, with its plan, before it starts."""
    proc = _check(tmp_path, "--only", "two-ranks", "--plan", "two-ranks=6")
    seen_running = False
    while proc.poll() is None:
        summary = tmp_path / "summary.json"
        if summary.exists():
            step = json.loads(summary.read_text())["steps"].get("two-ranks", {})
            seen_running |= step.get("status") == "running" and step.get("planned_s") == 6
        time.sleep(0.2)
    output = proc.stdout.read()
    assert proc.returncode == 1, output
    step = json.loads((tmp_path / "summary.json").read_text())["steps"]["two-ranks"]
    assert seen_running and step["status"] == "failed" and "killed" in step["error"]
    run_dir = str(tmp_path / "summary_steps" / "runs" / "two-ranks")
    deadline = time.time() + 10
    while (left := _processes_with(run_dir)) and time.time() < deadline:
        time.sleep(0.2)
    assert left == []


def _processes_with(text: str) -> list[int]:
    """The pids of live processes whose command line contains text."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace") and "Z" not in _state(cmdline.parent):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            pass
    return pids


def _state(proc_dir: Path) -> str:
    return (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_step_the_remaining_budget_cannot_cover_is_skipped_with_the_reason(tmp_path):
    proc = _check(tmp_path, "--only", "environment", "cuda-tests", "--plan", "environment=1", "--budget-s", "5")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert list(steps) == ["environment", "cuda-tests"] and steps["environment"]["status"] == "passed"
    assert steps["cuda-tests"]["status"] == "skipped" and steps["cuda-tests"]["planned_s"] == 150
    assert steps["cuda-tests"]["reason"].startswith("needs its planned 150 s, ")


def test_a_test_step_that_ran_no_test_fails(tmp_path):
    """pytest exits 5 when it selects nothing, 0 when everything skipped: neither says the GPU path works."""
    gpu_check = script("gpu_check")
    check = gpu_check.Check("cpu", tmp_path / "summary.json", tmp_path, 60, {})
    ok, figures = gpu_check.cuda_tests(check, 60, ["-k", "no_test_has_this_name"])
    assert not ok and figures["error"] == "ran no test"
    ok, figures = gpu_check.cuda_tests(check, 60, ["-k", "cudagraphs and on_cuda"])  # CUDA only: all skipped
    assert not ok and figures["error"] == "ran no test" and figures["skipped"] >= 1


def test_unknown_steps_and_plans_are_refused_in_one_line(tmp_path):
    for args, message in (
        (["--only", "fast:nope"], "invalid choice: 'fast:nope'"),
        (["--plan", "benchmark=soon"], "argument --plan: benchmark=soon: give STEP=SECONDS"),
    ):
        proc = _check(tmp_path, *args)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 2 and message in output.strip().splitlines()[-1]


def test_an_out_that_cannot_be_written_or_exists_is_refused_before_any_step(tmp_path):
    """--budget-s 1: without the refusal every step would be skipped at once, and the summary written (a --work that
    is a file: every step failed on it)."""
    (tmp_path / "file").write_text("")
    earlier = tmp_path / "summary.json"
    earlier.write_text('{"precious": 1}\n')
    for args, message in (
        (["--out", str(tmp_path / "file" / "s.json")], f"{tmp_path / 'file'} cannot be created or written ("),
        ([], f"--out {earlier} exists; pass a new path, or --only STEP... to re-run steps into it"),
        (["--only", "environment"], f"--out {earlier} is no summary to re-run steps into (KeyError: 'steps')"),
        (["--only", "environment", "--out", str(tmp_path)], f"--out {tmp_path}: {tmp_path} is a folder; pass another"),
        (["--out", str(tmp_path / "new.json"), "--work", str(tmp_path / "file")], f"--work {tmp_path}/file cannot be"),
    ):
        proc = _check(tmp_path, "--budget-s", "1", *args)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 2 and message in output.strip().splitlines()[-1], output
    assert earlier.read_text() == '{"precious": 1}\n' and not (tmp_path / "summary_steps").exists()


def test_only_re_runs_its_steps_into_an_existing_summary(tmp_path):
    """The re-run step's record replaces the earlier one; the other steps' stay, and the ratios use them."""
    plain = {"status": "passed", "planned_s": 100, "train_it_s": 2.0, "eval_s_per_1000": 50.0}
    steps = {"environment": {"status": "failed", "error": "earlier"}, "fast:plain": plain}
    (tmp_path / "summary.json").write_text(json.dumps({"steps": steps}))
    proc = _check(tmp_path, "--only", "environment")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["steps"]) == ["environment", "fast:plain"] and summary["steps"]["fast:plain"] == plain
    assert summary["steps"]["environment"]["status"] == "passed" and summary["steps"]["environment"]["torch"]
    assert len(summary["compared_with_cpu"]) >= 4  # the note and the docs' CPUs, from the earlier fast:plain


def test_the_runbooks_planned_budgets_are_the_scripts():
    """docs/benchmarks.md's table of planned budgets and their sum state what the script does."""
    gpu_check, doc = script("gpu_check"), (ROOT / "docs" / "benchmarks.md").read_text()
    runbook = doc.split("### GPU day: the runbook", 1)[1]
    documented = {}
    for line in runbook.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            for step in cells[0].replace("`", "").split(", "):
                documented[step] = float(cells[2].split()[0])
    assert documented == {name: plan[0] for name, plan in gpu_check.PLANS.items()}
    total = sum(plan[0] for plan in gpu_check.PLANS.values())
    assert f"Sum of the plans: {total:.0f} s" in runbook
