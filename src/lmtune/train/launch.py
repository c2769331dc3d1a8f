"""`lmtune train --nproc N`: torchrun itself (torch.distributed.run), supervised, with its failure report cut
to one line. When a training process dies, torchrun stops the others within seconds; this names the process
that failed first and how, instead of torchrun's traceback."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun


def launch_torchrun(nproc: int, args: list[str], oversubscribe: bool = False) -> None:
    """`lmtune train ... --nproc N` = `torchrun --standalone --nproc-per-node N -m lmtune.cli train ...`, waited
    for here (this process exits with its status). More processes than GPUs (or, without GPUs, CPU cores) only
    wait on each other: refused unless `oversubscribe`."""
    import torch

    from lmtune.hardware import cpu_cores

    devices, kind = (torch.cuda.device_count(), "GPUs") if torch.cuda.is_available() else (cpu_cores(), "CPU cores")
    if nproc > devices and not oversubscribe:
        from lmtune.errors import LmtuneError

        raise LmtuneError(
            f"--nproc {nproc} starts more training processes than this machine has {kind} "
            f"({devices}); use --nproc {devices} or fewer (--oversubscribe to insist)"
        )
    args = [arg for arg in args if arg != "--oversubscribe"]
    for i, arg in enumerate(args):  # drop --nproc N / --nproc=N: each worker is one process
        if arg == "--nproc":
            del args[i : i + 2]
            break
        if arg.startswith("--nproc="):
            del args[i]
            break
    sys.stderr.write(
        f"launching {nproc} processes: torchrun --standalone --nproc-per-node={nproc} -m lmtune.cli {' '.join(args)}\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmtune.train.launch",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "lmtune.cli",
            *args,
        ]
    )
    # Ctrl-C reaches the workers too (same terminal): they finish the step, save and exit; wait for that.
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    while True:
        try:
            sys.exit(proc.wait())
        except KeyboardInterrupt:
            continue


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
    return (
        f"training process {rank}{of} {how}; the others were stopped. Its own error, if it printed one, is "
        "above; continue from the last checkpoint with --resume"
    )


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
        sys.stderr.write(
            f"error: stopped by {name}; the training processes were stopped (each saves a checkpoint "
            "when it can): continue with --resume\n"
        )
        sys.exit(128 + int(err.sigval))


if __name__ == "__main__":
    main()
