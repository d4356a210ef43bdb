"""The outer step size schedule of the official code (REFERENCE.md section 2)."""

from __future__ import annotations


class LinearAnneal:
    """LambdaLR factor: eps_i = (i/M) eps_final + (1 - i/M) eps_0 at outer iteration i of M.

    A callable object (not a lambda) so LambdaLR's state_dict stores and restores it.
    """

    def __init__(self, eps_0: float, eps_final: float, iterations: int):
        self.eps_0, self.eps_final, self.iterations = eps_0, eps_final, iterations

    def __call__(self, i: int) -> float:
        frac = min(i, self.iterations) / self.iterations
        return (frac * self.eps_final + (1 - frac) * self.eps_0) / self.eps_0
