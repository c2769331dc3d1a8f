"""One contender in a fresh process (its peak RSS is its own): `python -m lmtune.bench.worker NAME JSON`."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from typing import Any

from lmtune.bench import chat, contenders
from lmtune.hardware import cpu_has_bf16
from lmtune.libraries import quiet_libraries

WORKERS = {
    **{
        f"{side}_{kind}": getattr(contenders, f"{side}_{kind}")
        for side in ("seed", "tuned", "lmtune")
        for kind in ("causal", "masked", "classifier")
    },
    "trl_chat": chat.trl_chat,
    "lmtune_chat": chat.lmtune_chat,
}


def run_worker(name: str, **kwargs) -> dict[str, Any]:
    """Run one contender in a fresh process; its peak RSS is the process's own."""
    cmd = [sys.executable, "-m", "lmtune.bench.worker", name, json.dumps(kwargs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMTUNE_CPU_BF16": str(int(cpu_has_bf16()))}  # one answer per run
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # worker entry: python -m lmtune.bench.worker NAME '{"kwargs": ...}'
    quiet_libraries()
    name, kwargs = sys.argv[1], json.loads(sys.argv[2])
    outcome = WORKERS[name](**kwargs)
    outcome["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(outcome))
