"""eps follows the official linear schedule (REFERENCE.md section 2)."""

import pytest
import torch

from reptile_exp.schedule import LinearAnneal


@pytest.mark.parametrize("eps_0,eps_final,iterations", [(1.0, 0.0, 100_000), (0.1, 0.0, 30_000), (0.25, 0.05, 10)])
def test_eps_is_linear_at_first_middle_last(eps_0, eps_final, iterations):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=eps_0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LinearAnneal(eps_0, eps_final, iterations))
    expected = lambda i: (i / iterations) * eps_final + (1 - i / iterations) * eps_0  # noqa: E731
    seen = {}
    for i in range(iterations):
        if i in (0, iterations // 2, iterations - 1):
            seen[i] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    assert seen[0] == eps_0
    for i, lr in seen.items():
        assert lr == pytest.approx(expected(i), rel=1e-12, abs=1e-15)
    assert seen[iterations - 1] == pytest.approx(eps_0 / iterations + eps_final * (iterations - 1) / iterations)


def test_schedule_survives_state_dict_round_trip():
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
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5)
