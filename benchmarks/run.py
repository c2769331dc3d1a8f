"""The bench as a script: python benchmarks/run.py [--full] [--out DIR]  (same as `lmtune bench`)."""
import argparse
from pathlib import Path

from lmtune.bench import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="the full comparison (about 15 minutes on 2 cores)")
    parser.add_argument("--out", type=Path, default=None, help="folder for bench.json and bench.md")
    args = parser.parse_args()
    run(quick=not args.full, out_dir=args.out)
