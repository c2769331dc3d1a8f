"""Many processes through torch.distributed, as `torchrun` starts them (one per device, one or many nodes).

Plain torch.distributed (not accelerate): the loop stays the one readable loop, and what it does on more
than one process is a handful of calls here. CPU processes talk over gloo, GPUs over NCCL. DDP by default;
FSDP2 (`fully_shard` per transformer block) with `train.distributed: fsdp` for models that do not fit
one device. Outside torchrun everything here is a no-op (world size 1)."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lmtune.errors import LmtuneError
from lmtune.hardware import default_device

log = logging.getLogger("lmtune")


@dataclass
class Cluster:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "ddp"  # ddp | fsdp

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # ---- setup --------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, strategy: str = "ddp", timeout_minutes: float = 30) -> "Cluster":
        """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, ...)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = torch.cuda.is_available()
        if world == 1:
            return cls(device=default_device(), strategy=strategy)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            # A peer that dies makes the others fail after `timeout` instead of hanging forever.
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
        if rank != 0:  # one voice: the other ranks only speak up on errors
            logging.getLogger("lmtune").setLevel(logging.WARNING)
        return cls(rank, world, local_rank, device, strategy)

    def lost_a_peer(self, err: BaseException) -> bool:
        """Whether `err` is a collective failing because another process went away (gloo: the connection
        closed; NCCL: a remote error or the timeout), rather than an error of this process's own."""
        if not self.active or not isinstance(err, RuntimeError):
            return False
        text = str(err)
        return isinstance(err, getattr(dist, "DistBackendError", ())) or any(
            sign in text
            for sign in (
                "Connection reset by peer",
                "Connection closed by peer",
                "Broken pipe",
                "remote process exited",
                "Timed out",
                "NCCL communicator was aborted",
            )
        )

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    # ---- the model ----------------------------------------------------------------------------------
    def wrap(self, model, activation_checkpointing: bool = False, cpu_offload: bool = False):
        """DDP, or FSDP2 sharding each transformer block and then the whole model."""
        if activation_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
        if not self.active:
            return model
        if self.strategy == "ddp":
            return DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

        blocks = set(getattr(model, "_no_split_modules", None) or [])
        kwargs = {"offload_policy": CPUOffloadPolicy()} if cpu_offload else {}
        sharded = 0
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, **kwargs)
                sharded += 1
        if not sharded:
            raise LmtuneError(f"train.distributed fsdp: cannot find the transformer blocks of {type(model).__name__}")
        fully_shard(model, **kwargs)
        return model

    def unwrap(self, model):
        """The plain model inside torch.compile's and DDP's wrappers (what is saved and evaluated)."""
        model = getattr(model, "_orig_mod", model)
        return model.module if isinstance(model, DistributedDataParallel) else model

    def no_sync(self, model, sync: bool):
        """Gradients are averaged across processes only on the last micro-batch of a step."""
        if not self.active or sync:
            return contextlib.nullcontext()
        if isinstance(model, DistributedDataParallel):
            return model.no_sync()
        model.set_requires_gradient_sync(False)
        return _restore_sync(model)

    @property
    def sharded(self) -> bool:
        """FSDP over more than one process: checkpoints are sharded (DCP, one file per process)."""
        return self.strategy == "fsdp" and self.active

    def full_state_dict(self, model) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on the main process (FSDP gathers its shards; every rank must call):
        for final/, best/ and last/, which are plain Hugging Face folders."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, model, optimizer, state_dict: dict) -> None:
        """A full optimizer state (an HF-format checkpoint: DDP or one process) into this optimizer; under
        FSDP each process keeps its own shard of it."""
        if not self.sharded:
            optimizer.load_state_dict(state_dict)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        model = self.unwrap(model)  # names without torch.compile's prefix
        set_optimizer_state_dict(
            model,
            optimizer,
            optim_state_dict=_keyed_by_name(model, optimizer, state_dict),
            options=StateDictOptions(full_state_dict=True),
        )

    # ---- agreeing ---------------------------------------------------------------------------------
    def agree(self, values: list, op: str = "sum") -> list[float]:
        """All processes' `values` (numbers, or 0-d tensors on this device) combined (sum or max), as
        Python floats: one host sync however many values there are (with one process too)."""
        tensor = torch.stack([torch.as_tensor(v, device=self.device).to(torch.float64) for v in values])
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor.tolist()

    def share(self, value):
        """The main process's `value` (any picklable object) on every process; every process must call."""
        if not self.active:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def shard(self, global_batch: list[int], per_device: int) -> list[int]:
        """This process's part of a global batch (consecutive slices, so no sample is seen twice)."""
        if not self.active:
            return global_batch
        return global_batch[self.rank * per_device : (self.rank + 1) * per_device]


def _keyed_by_name(model, optimizer, state_dict: dict) -> dict:
    """`optimizer.state_dict()` numbers the parameters; set_optimizer_state_dict wants their names. The
    saved groups list the parameters in the order make_optimizer gave them, as this optimizer's do."""
    if all(isinstance(key, str) for group in state_dict["param_groups"] for key in group["params"]):
        return state_dict
    names = {id(param): name for name, param in model.named_parameters()}
    if len(state_dict["param_groups"]) != len(optimizer.param_groups) or any(
        len(saved["params"]) != len(group["params"])
        for saved, group in zip(state_dict["param_groups"], optimizer.param_groups)
    ):
        raise LmtuneError("the checkpoint's optimizer state does not match this model's parameters")
    name_of = {
        key: names[id(param)]
        for saved, group in zip(state_dict["param_groups"], optimizer.param_groups)
        for key, param in zip(saved["params"], group["params"])
    }
    return {
        "state": {name_of[key]: value for key, value in state_dict["state"].items()},
        "param_groups": [
            {**group, "params": [name_of[key] for key in group["params"]]} for group in state_dict["param_groups"]
        ],
    }


@contextlib.contextmanager
def _restore_sync(model):
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
