"""The checkpoint a run starts from, named by the knob the user set (issue 12): a bad `resume=` is reported as
`resume`, a bad `checkpoint=` (evaluate_only=true) as `checkpoint`, in one line, exit status 1."""

from __future__ import annotations

import pytest
from conftest import run_train


@pytest.mark.parametrize(
    ("overrides", "knob"),
    [(["resume={tmp}/missing/dir"], "resume"), (["evaluate_only=true", "checkpoint={tmp}/missing/dir"], "checkpoint")],
)
def test_a_missing_checkpoint_is_reported_under_the_knob_that_named_it(tmp_path, overrides, knob):
    args = [o.format(tmp=tmp_path) for o in overrides]
    proc = run_train(tmp_path, f"hydra.run.dir={tmp_path}/run", *args, "logger.mode=disabled", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, proc.stderr
    assert f"error: {knob}={tmp_path}/missing/dir is invalid: {tmp_path}/missing/dir does not exist" in errors[0]
    other = {"resume": "checkpoint", "checkpoint": "resume"}[knob]
    assert f"{other}=" not in errors[0]
