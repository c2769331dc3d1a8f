"""python -m lmtune.cli (torchrun launches it so)."""

from lmtune.cli import main

main()
