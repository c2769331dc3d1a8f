"""`lmtune train --nproc N`: torchrun itself (torch.distributed.run), with its failure report cut to one
line. When a training process dies, torchrun stops the others within seconds; this names the process
that failed first and how, instead of torchrun's traceback."""
from __future__ import annotations

import logging
import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun


def describe_failure(err: ChildFailedError, world: int | None = None) -> str:
    rank, failure = err.get_first_failure()
    if failure.exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-failure.exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-failure.exitcode}"
    else:
        how = f"failed (exit status {failure.exitcode})"
    of = f" of {world}" if world else ""
    return (f"training process {rank}{of} {how}; the others were stopped. Its own error, if it printed one, is "
            "above; continue from the last checkpoint with --resume")


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    world = next((int(a.split("=", 1)[1]) for a in args if a.startswith("--nproc-per-node=")), None)
    # torchrun's agent logs each step of stopping the others; the one line below says what matters.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        torchrun(args)
    except ChildFailedError as err:
        sys.stderr.write(f"error: {describe_failure(err, world)}\n")
        sys.exit(1)
    except SignalException as err:  # SIGTERM/SIGINT to torchrun: it has stopped the processes (each saves first)
        name = signal.Signals(err.sigval).name
        sys.stderr.write(f"error: stopped by {name}; the training processes were stopped (each saves a checkpoint "
                         "when it can): continue with --resume\n")
        sys.exit(128 + int(err.sigval))


if __name__ == "__main__":
    main()
