"""The meta-learning engine: functional inner optimizers, the task-batched inner loop, meta-gradients."""
