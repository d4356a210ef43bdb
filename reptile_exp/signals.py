"""Pre-emption: SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 become a flag the training loop checks between
outer iterations and the final evaluation between chunks of test tasks; training then checkpoints, the W&B run
is finished, and the signal is re-delivered to the handler that was installed before (so submitit's requeue or
the default exit still happen). submitit sends SIGUSR2 before a SLURM time limit or on pre-emption
(SUBMITIT_PREEMPT_SIGNAL picks another); its handler then requeues the job, which resumes from that checkpoint
(docs/sweeps.md).
"""

from __future__ import annotations

import signal
import sys
import threading

from .errors import ReptileExpError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Interrupted(ReptileExpError):
    def __init__(self, signum: int, checkpoint: str | None):
        """checkpoint: the one written on stopping, or None when stopped while evaluating (nothing to save)."""
        self.signum = signum
        done = f"checkpoint {checkpoint} written" if checkpoint else "evaluation not finished, nothing written"
        super().__init__(
            f"stopped by {signal.Signals(signum).name}; {done}, re-run the same command (same output dir) to resume"
        )


class StopSignals:
    """Context manager recording the first stop signal in `received` (main thread only)."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def redeliver(signum: int) -> None:
    """Hand the signal to the handler installed before ours (Ctrl-C just exits); exit 128 + signum."""
    if signum != signal.SIGINT:
        signal.raise_signal(signum)
    sys.exit(128 + signum)
