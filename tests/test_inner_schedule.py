"""The inner minibatch schedule (REFERENCE.md section 2): without replacement the inner loop passes over a task's
examples in fresh shuffles; with replacement every minibatch is drawn afresh; a minibatch larger than a task fails in
one line. Checked on data.tasks.minibatch_schedule, on the real samplers and through the real training step."""

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from test_fewshot_sampler import identity_splits

from reptile_exp import protocols, report
from reptile_exp.data.fewshot import FewShotClassification
from reptile_exp.data.sine import Sine
from reptile_exp.data.tasks import minibatch_schedule
from reptile_exp.errors import ConfigError
from reptile_exp.evaluate import evaluate
from reptile_exp.experiment import build
from reptile_exp.train import outer_step


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def passes(batches: torch.Tensor, n: int) -> torch.Tensor:
    """The schedule's examples in order, cut into passes of n: (T, passes, n)."""
    order = batches.flatten(1)
    return order.view(order.shape[0], -1, n)


def permutations(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Whether each row (last dimension) holds each of 0..n-1 exactly once."""
    return (rows.sort(-1).values == torch.arange(n)).all(-1)


def test_without_replacement_every_pass_is_a_fresh_shuffle_and_a_batch_may_straddle_two():
    """10 examples in minibatches of 3: the schedule cut at every 10th example (not at minibatch boundaries, so the
    4th minibatch ends pass 1 and starts pass 2) is a permutation each time, shuffled afresh."""
    n, tasks = 10, 50
    batches = minibatch_schedule(tasks, n, 20, 3, gen())
    assert batches.shape == (tasks, 20, 3)
    cut = passes(batches, n)
    assert cut.shape == (tasks, 6, n) and permutations(cut, n).all(), "each pass visits every example once"
    for t in range(tasks):
        assert len({tuple(p.tolist()) for p in cut[t]}) == 6, "each pass is shuffled afresh"
    assert len({tuple(p.tolist()) for p in cut[:, 0]}) == tasks, "each task has its own shuffles"
    # an unfinished last pass (8 steps of 3 = 2 passes + 4 examples): the full passes as above, then distinct examples
    partial = minibatch_schedule(tasks, n, 8, 3, gen()).flatten(1)
    assert permutations(partial[:, :20].reshape(tasks, 2, n), n).all()
    tail = partial[:, 20:].sort(-1).values
    assert (tail[:, 1:] != tail[:, :-1]).all()


def test_with_replacement_each_minibatch_is_drawn_afresh():
    """Each minibatch holds distinct examples, every example equally likely; consecutive minibatches overlap, which
    never happens within one pass without replacement."""
    n, batch, steps, tasks = 10, 4, 50, 200
    drawn = minibatch_schedule(tasks, n, steps, batch, gen(), replacement=True)
    assert drawn.shape == (tasks, steps, batch) and drawn.min() >= 0 and drawn.max() < n
    ordered = drawn.sort(-1).values
    assert (ordered[..., 1:] != ordered[..., :-1]).all(), "no example twice in one minibatch"
    counts = torch.bincount(drawn.flatten(), minlength=n).double()
    expected = tasks * steps * batch / n
    assert ((counts - expected).abs() < 0.05 * expected).all(), counts

    def overlap(b: torch.Tensor) -> float:
        """The share of tasks whose first two minibatches share an example."""
        return (b[:, 0].unsqueeze(-1) == b[:, 1].unsqueeze(-2)).flatten(1).any(1).double().mean().item()

    assert overlap(drawn) > 0.8  # 1 - C(6,4)/C(10,4) = 0.93 for independent draws
    assert overlap(minibatch_schedule(tasks, n, steps, batch, gen())) == 0


@pytest.mark.parametrize("replacement", [False, True], ids=["without", "with"])
def test_the_samplers_schedule_the_inner_loop_over_their_support_examples(replacement):
    """Sine: one pass over the 50 grid points in 5 minibatches of 10 (the Reptile setting); N-way K-shot: over the
    n_way * train_shots = 15 support examples in 3 minibatches of 5, the query examples excluded. With replacement
    such a pass is (almost never) a permutation."""
    sine = Sine().sample_train(40, 5, 10, gen(1), replacement)
    fewshot = FewShotClassification(identity_splits(), n_way=5, k_shot=2, train_shots=3)
    images = fewshot.sample_train(40, 3, 5, gen(1), replacement, query_shots=2)
    for tasks, n in ((sine, 50), (images, 15)):
        assert tasks.x.shape[1] == n and tasks.batches.min() >= 0 and tasks.batches.max() < n
        one_pass = permutations(tasks.batches.flatten(1), n)
        assert one_pass.all() if not replacement else one_pass.double().mean() < 0.5


def _experiment(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=["logger.mode=disabled", "progress=false", "device=cpu", *overrides])
    return build(cfg)


@pytest.mark.parametrize("replacement", [False, True], ids=["without", "with"])
def test_an_inner_batch_larger_than_the_task_fails_in_one_line_naming_the_knob(replacement):
    """The sine grid holds 50 points: inner_batch=60 cannot be drawn from one task, with replacement or without."""
    exp = _experiment("inner_batch=60", f"replacement={replacement}")
    with pytest.raises(ConfigError, match="inner_batch=60 is invalid") as err:
        outer_step(exp)
    assert "\n" not in str(err.value) and "50" in str(err.value)


def test_an_eval_batch_larger_than_the_support_set_cycles_through_it():
    """At evaluation the official code cycles through the K-shot support set (dataset=omniglot's defaults: eval_batch
    10 over 5 examples): each minibatch holds every example twice, none three times."""
    batches = minibatch_schedule(20, 5, 4, 10, gen(), evaluation=True)
    counts = torch.nn.functional.one_hot(batches, 5).sum(2)
    assert (counts == 2).all()
    with pytest.raises(ConfigError, match="inner_batch=10 is invalid: a training task has 5 examples"):
        minibatch_schedule(20, 5, 4, 10, gen())


@pytest.mark.parametrize("batch,steps", [(2, 5), (10, 4)], ids=["one_pass", "cycling"])
def test_the_test_tasks_schedule_the_inner_loop_over_every_support_example(batch, steps):
    """sample_eval's minibatches visit each of the N * K support examples (5-way 2-shot: 10; sine: its k_shot points)
    equally often: one pass as a permutation, and eval_batch above the support set cycling through all of it."""
    fewshot = FewShotClassification(identity_splits(), n_way=5, k_shot=2, train_shots=3)
    sine = Sine(k_shot=10)
    for tasks, n in (
        (fewshot.sample_eval(40, steps, batch, gen(2)), 10),
        (sine.sample_eval(40, steps, batch, gen(2)), 10),
    ):
        assert tasks.x.shape[1] == n
        counts = torch.nn.functional.one_hot(tasks.batches.flatten(1), n).sum(1)
        assert (counts == steps * batch // n).all(), counts


def test_the_test_tasks_draw_their_minibatches_with_replacement_when_asked():
    """replacement=true holds at test time too (the official code passes it to its evaluation): sample_eval's
    minibatches then hold distinct support examples drawn afresh, so consecutive ones overlap; without, a pass of
    the support set never repeats an example."""
    fewshot = FewShotClassification(identity_splits(), n_way=5, k_shot=2, train_shots=3)
    for dataset in (fewshot, Sine(k_shot=10)):
        drawn = dataset.sample_eval(200, 6, 4, gen(4), replacement=True).batches
        ordered = drawn.sort(-1).values
        assert (ordered[..., 1:] != ordered[..., :-1]).all(), "no example twice in one minibatch"
        first_two = (drawn[:, 0].unsqueeze(-1) == drawn[:, 1].unsqueeze(-2)).flatten(1).any(1).double().mean()
        assert first_two > 0.8  # 1 - C(6,4)/C(10,4) = 0.93 for independent draws
        cycled = dataset.sample_eval(200, 6, 4, gen(4)).batches
        assert not (cycled[:, 0].unsqueeze(-1) == cycled[:, 1].unsqueeze(-2)).any()


def test_an_eval_batch_larger_than_the_support_set_with_replacement_is_refused_in_one_line():
    """With replacement a test minibatch cannot be larger than the support set: refused by protocols.parse before
    any work (the top-level knob or the protocol's own), and by the schedule itself."""
    with pytest.raises(ConfigError, match=r"^eval_batch=11 is invalid with replacement=true: .* 10 support"):
        protocols.parse(_config("eval_batch=11", "replacement=true"))
    entry = "protocols=[{name:a},{name:b,eval_batch:6}]"  # 5-way 1-shot: eval_batch 5 fits, 6 does not
    with pytest.raises(ConfigError, match=r"^protocols\[1\]\.eval_batch=6 is invalid with replacement=true"):
        protocols.parse(_config("experiment=omniglot_5w1s", entry, "replacement=true"))
    assert len(protocols.parse(_config("eval_batch=11"))) == 1  # without replacement it cycles
    with pytest.raises(ConfigError, match="eval_batch=6 is invalid with replacement=true"):
        minibatch_schedule(3, 5, 2, 6, gen(), replacement=True, evaluation=True)


def test_the_final_evaluation_draws_its_minibatches_with_the_runs_replacement():
    """report.evaluate_split (periodic and final evaluations) passes the run's replacement on: its result equals
    evaluate() with replacement=True on the same tasks, and differs from the cycling schedule's."""
    exp = _experiment("eval_batch=5", "k_eval=3", "replacement=true")
    ours = report.evaluate_split(exp, "test", 8, seed=3)
    args = (exp.learner, exp.phi, exp.inner_state, exp.dataset, "test", 8, 3, 5)
    with_replacement = evaluate(*args, torch.Generator().manual_seed(3), 8, replacement=True)
    cycling = evaluate(*args, torch.Generator().manual_seed(3), 8)
    assert ours["mse"] == with_replacement["mse"] != cycling["mse"]


def _config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=list(overrides))
