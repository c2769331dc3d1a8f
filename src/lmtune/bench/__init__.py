"""`lmtune bench`: lmtune against the seed recipes as users write them, measured side by side in one run.

Each training contender runs in its own process (for a clean peak RSS) for the same wall time, on the
same model config, corpus and batch size; the report gives ratios, not absolute targets.

Layout: machine.py (peak matmul, FLOPs per token), contenders.py (seed recipes and lmtune, one per
objective), worker.py (one contender per process), inference.py (generation, fill-mask, data prep),
report.py (Markdown), suite.py (`run`: the sections in order).
"""
