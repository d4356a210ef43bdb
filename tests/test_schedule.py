"""eps follows the official linear schedule (REFERENCE.md section 2): eps_i = (i/M) eps_final + (1 - i/M) eps_0
at outer iteration i of M. The loop's use of it (the logged train/eps of a real run) is in test_run_knobs.py."""

import pytest
import torch

from reptile_exp.schedule import LinearAnneal


def expected(i: int, eps_0: float, eps_final: float, iterations: int) -> float:
    return (i / iterations) * eps_final + (1 - i / iterations) * eps_0


@pytest.mark.parametrize("eps_0,eps_final,iterations", [(1.0, 0.0, 100_000), (0.1, 0.0, 30_000), (0.25, 0.05, 10)])
def test_eps_is_linear_at_first_middle_last(eps_0, eps_final, iterations):
    """The LambdaLR factor times eps_0, called directly at the first, middle and last iteration (and after the end)."""
    factor = LinearAnneal(eps_0, eps_final, iterations)
    assert eps_0 * factor(0) == eps_0
    for i in (1, iterations // 2, iterations - 1, iterations):
        assert eps_0 * factor(i) == pytest.approx(expected(i, eps_0, eps_final, iterations), rel=1e-12, abs=1e-15)
    assert eps_0 * factor(iterations + 5) == pytest.approx(eps_final, abs=1e-15)  # it stays at eps_final


def test_lambdalr_steps_through_the_schedule():
    """Driven as the training loop drives it: optimizer step, then scheduler step, lr read before each step."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.25)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LinearAnneal(0.25, 0.05, 10))
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([expected(i, 0.25, 0.05, 10) for i in range(10)], rel=1e-12)


def test_schedule_survives_state_dict_round_trip():
    """Restored after 4 of 10 iterations into a scheduler built with another schedule, it goes on as the original
    would have: through the rest of the schedule, to eps_final at the end and staying there."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LinearAnneal(1.0, 0.0, 10))
    for _ in range(4):
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([param], lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, LinearAnneal(5.0, 5.0, 999))
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    seen = []
    for _ in range(4, 13):
        opt2.step()
        sched2.step()
        seen.append(opt2.param_groups[0]["lr"])
    assert seen[0] == pytest.approx(0.5, rel=1e-12)
    assert seen == pytest.approx([expected(min(i, 10), 1.0, 0.0, 10) for i in range(5, 14)], rel=1e-12, abs=1e-15)
