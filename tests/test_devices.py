"""Numbers and draws that must not depend on the dtype or the device (issue 11, defects 2 and 6).

That the same seed draws the same tasks with data on a CUDA device: tests/test_fake_cuda.py."""

import hashlib
import json
import math

import torch
from conftest import final_phi, run_train

from reptile_exp.data.fewshot import FewShotClassification, FewShotSplit
from reptile_exp.data.sine import Sine
from reptile_exp.evaluate import chunk_size, task_bytes
from reptile_exp.meta.learner import Learner
from reptile_exp.meta.optim import Adam
from reptile_exp.models import OmniglotConvNet


def test_float64_runs_end_to_end_on_sine_omniglot_and_maml(tmp_path):
    """dtype=float64 trains, evaluates periodically and at the end, and checkpoints in float64 (defect 2: the
    evaluation's memory probe ran in float32 and crashed at the first evaluation)."""
    presets = ["sine_reptile", "omniglot_5w1s", "sine_maml"]
    run_train(
        tmp_path, f"experiment={','.join(presets)}", "debug=smoke", "dtype=float64", "iterations=3", multirun=True
    )
    sweep = next((tmp_path / "outputs" / "multiruns").iterdir())
    for job, preset in enumerate(presets):
        summary = json.loads((sweep / str(job) / "summary.json").read_text())
        assert summary["iterations"] == 3 and math.isfinite(summary["objective"]), preset
        assert {p.dtype for p in final_phi(sweep / str(job)).values()} == {torch.float64}, preset
        # debug=smoke: eval_every=3, so one periodic evaluation (iteration 3) and the final one, both finite
        records = [json.loads(line) for line in (sweep / str(job) / "metrics.jsonl").read_text().splitlines()]
        periodic = [r for r in records if any(k.startswith("eval/") for k in r)]
        final = [r for r in records if any(k.startswith("final/") for k in r)]
        assert [r["iteration"] for r in periodic] == [3] and [r["iteration"] for r in final] == [3], preset
        values = [v for r in periodic + final for k, v in r.items() if k.startswith(("eval/", "final/"))]
        assert values and all(isinstance(v, float) and math.isfinite(v) for v in values), preset


def test_the_evaluation_chunk_counts_the_dtypes_element_size():
    """float64 numbers take 8 bytes: half as many tasks fit in the same memory budget as in float32."""
    chunks = {}
    for dtype in (torch.float32, torch.float64):
        learner = Learner(OmniglotConvNet().to(dtype), Adam(1e-3), "cross_entropy")
        phi = dict(learner.model.named_parameters())
        chunks[dtype] = chunk_size(task_bytes(learner, phi, (1, 28, 28), examples=10), 10_000, memory_mb=256)
    assert chunks[torch.float32] > 10 and chunks[torch.float64] == chunks[torch.float32] // 2


def test_cpu_draws_are_those_of_the_published_runs():
    """Sine and N-way K-shot tasks drawn on the CPU from a seed, digested (values to 1e-4, so that a last-bit
    difference of sin between CPUs does not count), equal those of the code before the samplers learned to draw
    on the generator's device: the documented results and running evaluations depend on these tasks."""
    g = torch.Generator().manual_seed(11)
    images = torch.randint(0, 256, (8, 6, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    fewshot = FewShotClassification({s: FewShotSplit(images, ["c"] * 8) for s in ("train", "test")}, 3, 2, 3)
    batches = [
        Sine().sample_train(3, 4, 10, g, query_shots=5),
        Sine(x_sampling="uniform").sample_train(3, 4, 5, g, replacement=True, query_shots=5),
        Sine().sample_eval(3, 5, 10, g),
        Sine(x_sampling="uniform").sample_eval(3, 5, 10, g),
        fewshot.sample_train(3, 4, 5, g, query_shots=1),
        fewshot.sample_eval(3, 4, 5, g),
    ]
    digest = hashlib.sha256()
    for t in [t for b in batches for t in (b.x, b.y, b.batches, b.x_query, b.y_query) if t is not None]:
        digest.update((t.double() * 1e4).round().to(torch.int64).numpy().tobytes())
    assert digest.hexdigest()[:16] == "f21031344a9917ab"
