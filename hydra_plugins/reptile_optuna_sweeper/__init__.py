"""reptile_exp's Optuna sweeper for Hydra 1.3 (issue 20; docs/sweeps.md "Hyperparameter search with Optuna").

Hydra finds it by scanning the `hydra_plugins` namespace package; it is registered as `hydra/sweeper=reptile_optuna`
(config.py), beside and never in place of hydra-optuna-sweeper's `optuna`. sweeper.py drives the study with
Optuna's ask/tell API and hands each job its trial number, so the job reports to it (reptile_exp/pruning.py).
"""
