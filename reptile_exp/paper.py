"""The paper's reported results and settings, in one place (Nichol, Achiam & Schulman 2018, arXiv:1803.02999 v3).

RESULTS: test accuracy (%) and its +- as printed in Table 1 (Omniglot) and Table 2 (Mini-ImageNet), REFERENCE.md
section 7 (the paper does not say what the +- measures). SETTINGS: the hyperparameters of each column,
Appendix A = REFERENCE.md section 6; the 1-shot and 5-shot columns of a dataset and way train identically.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One column of a table: a dataset, N-way, K-shot, and the paper's settings for it (Appendix A)."""

    table: str
    dataset: str  # the config group option: omniglot | miniimagenet
    n_way: int
    k_shot: int
    train_shots: int
    inner_batch: int
    k: int
    inner_lr: float
    meta_batch: int
    iterations: int
    eval_batch: int
    k_eval: int

    @property
    def label(self) -> str:
        return f"{self.k_shot}-shot {self.n_way}-way"

    @property
    def preset(self) -> str:
        """Its conf/experiment preset, which holds these settings (tests/test_paper_presets.py)."""
        return f"{self.dataset}_{self.n_way}w{self.k_shot}s"


@dataclass(frozen=True)
class Row:
    """One method of a table: the algorithm (config group option) and whether it is transductive."""

    label: str
    algorithm: str  # reptile | fomaml | maml
    transductive: bool


TABLE1, TABLE2 = "Table 1", "Table 2"
TITLES = {TABLE1: "Table 1: Omniglot", TABLE2: "Table 2: Mini-ImageNet 5-way"}
COLUMNS = [
    Column(TABLE1, "omniglot", 5, 1, 10, 10, 5, 0.001, 5, 100_000, 5, 50),
    Column(TABLE1, "omniglot", 5, 5, 10, 10, 5, 0.001, 5, 100_000, 5, 50),
    Column(TABLE1, "omniglot", 20, 1, 10, 20, 10, 0.0005, 5, 200_000, 10, 50),
    Column(TABLE1, "omniglot", 20, 5, 10, 20, 10, 0.0005, 5, 200_000, 10, 50),
    Column(TABLE2, "miniimagenet", 5, 1, 15, 10, 8, 0.001, 5, 100_000, 5, 50),
    Column(TABLE2, "miniimagenet", 5, 5, 15, 10, 8, 0.001, 5, 100_000, 15, 50),
]
ROWS = [
    Row("MAML + transduction", "maml", True),
    Row("FOMAML + transduction", "fomaml", True),
    Row("Reptile", "reptile", False),
    Row("Reptile + transduction", "reptile", True),
]
# (table, row label) -> one (mean, +-) per column of that table, in COLUMNS order
RESULTS = {
    (TABLE1, "MAML + transduction"): [(98.7, 0.4), (99.9, 0.1), (95.8, 0.3), (98.9, 0.2)],
    (TABLE1, "FOMAML + transduction"): [(98.3, 0.5), (99.2, 0.2), (89.4, 0.5), (97.9, 0.1)],
    (TABLE1, "Reptile"): [(95.39, 0.09), (98.90, 0.10), (88.14, 0.15), (96.65, 0.33)],
    (TABLE1, "Reptile + transduction"): [(97.68, 0.04), (99.48, 0.06), (89.43, 0.14), (97.12, 0.32)],
    (TABLE2, "MAML + transduction"): [(48.70, 1.84), (63.11, 0.92)],
    (TABLE2, "FOMAML + transduction"): [(48.07, 1.75), (63.15, 0.91)],
    (TABLE2, "Reptile"): [(47.07, 0.26), (62.74, 0.37)],
    (TABLE2, "Reptile + transduction"): [(49.97, 0.32), (65.99, 0.58)],
}


def columns(table: str) -> list[Column]:
    return [c for c in COLUMNS if c.table == table]


def reported(table: str, row: Row, column: Column) -> tuple[float, float]:
    """The paper's (mean, +-) in % for a row and column of a table."""
    return RESULTS[(table, row.label)][columns(table).index(column)]
