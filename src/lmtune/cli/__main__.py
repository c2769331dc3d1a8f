"""python -m lmtune.cli (the workbench and torchrun start trainings so)."""

import signal

from lmtune.cli import main

# A parent started in the background (nohup, `&` in a script, CI) hands SIGINT down as ignored; the workbench's
# Stop is a SIGINT and must stop a training at any point, as Ctrl-C does in a terminal (before the training loop
# too: loading, the base evaluation, the learning-rate probe).
signal.signal(signal.SIGINT, signal.default_int_handler)
main()
