"""Several processes: who writes, how a stage's work is split, and how the results come back.

``torchrun --nproc_per_node N -m rlaif run RECIPE`` (or ``accelerate launch -m rlaif run RECIPE``) starts N
copies of the same loop. accelerate's ``PartialState`` says which copy is which; everything else follows
three rules:

- **The main process owns the run folder.** It holds the lock, writes every file (round files, manifest,
  metrics, state, ``result.json``), talks to W&B and prints progress. :func:`on_main` runs a piece of work
  there and hands its result (or its error) to every process, which is also the point where the others
  wait for the files to exist.
- **The heavy stages split their work by prompt.** Generation, judging, log-probabilities and the held-out
  evaluation take a contiguous share of the prompts each (:func:`split`; a prompt's K candidates, and so
  every judge group, stay on one process) and :func:`gather` puts the results back in prompt order, the
  order one process would have produced. Generation samples with one random stream per candidate
  (:mod:`rlaif.sampling`), so which process drew a candidate does not change it.
- **Training is TRL's.** DPO, GRPO and RLOO run under DDP (or the FSDP / DeepSpeed config accelerate was
  launched with); the adapter is saved by the main process (:func:`rlaif.lora.save_adapter`).

With one process every helper here is the identity (and :func:`on_main` a plain call).
"""

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import datasets
import torch
import transformers
from accelerate import PartialState
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, parse_flag_from_env

from rlaif.errors import RlaifError

T = TypeVar("T")
RANK_LOG_ENV = "RLAIF_RANK_LOG"  # a folder: each process appends what it did to rank<N>.jsonl (for tests)


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_state() -> PartialState:
    """accelerate's process state, created on the CPU where a multi-process launch finds no GPU.

    ``PartialState()`` alone takes a ``torchrun`` launch on a machine without CUDA for N unrelated single
    processes (its gloo backend is chosen only when told ``cpu=True``; ``ACCELERATE_USE_CPU`` is read by the
    ``Accelerator``, not by ``PartialState``), and every one of them would write the run folder.
    """
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (launched_processes() > 1 and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def is_main_process() -> bool:
    return process_state().is_main_process


def quiet_other_processes() -> None:
    """Library warnings, their progress bars and the CLI's printed output come from the main process only
    (``python -m rlaif`` also turns tqdm off there). Errors still reach stderr.

    Called before the state exists, so it reads the launcher's ``RANK``.
    """
    if int(os.environ.get("RANK", "0")) == 0:
        return
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)


# ---------------------------------------------------------------- splitting work


def share(state: PartialState, n_items: int, unit: int = 1) -> range:
    """This process's contiguous share of ``n_items`` items, cut only at multiples of ``unit``.

    Shares differ by at most one unit, the earlier processes taking the larger ones (as accelerate's
    ``split_between_processes`` does); a process may get nothing when there are fewer units than processes.
    """
    units = -(-n_items // unit)
    per, extra = divmod(units, state.num_processes)
    i = state.process_index
    start = i * per + min(i, extra)
    stop = start + per + (1 if i < extra else 0)
    return range(min(start * unit, n_items), min(stop * unit, n_items))


def split(state: PartialState, items: Sequence[T], unit: int = 1) -> list[T]:
    """This process's contiguous share of ``items`` (whole units of ``unit`` items: a prompt's K rows, a batch)."""
    r = share(state, len(items), unit)
    return list(items[r.start : r.stop])


def gather(state: PartialState, part: list[T]) -> list[T]:
    """Every process's share, concatenated in process order: for shares made by :func:`split`, the original order."""
    if state.num_processes == 1:
        return list(part)
    return gather_object(list(part))


def on_main(state: PartialState, fn: Callable[..., T], *args, share_result: bool = True, **kwargs) -> T | None:
    """``fn(*args, **kwargs)`` on the main process; every process returns its result (``share_result``) or None.

    The other processes wait here until the main one is done, so whatever ``fn`` wrote exists when they
    continue. An error raised by ``fn`` is raised on every process: a user error (:class:`RlaifError`) as the
    same error, so that all processes exit with the CLI's message instead of waiting forever.
    """
    if state.num_processes == 1:
        return fn(*args, **kwargs)
    result, error = None, None
    if state.is_main_process:
        try:
            result = fn(*args, **kwargs)
        except RlaifError as exc:
            error = ("user", str(exc))
            raise
        except BaseException as exc:
            error = ("crash", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            box = [(result if share_result else None, error)]
            broadcast_object_list(box)
    else:
        box = [None]
        broadcast_object_list(box)
        result, error = box[0]
        if error is not None:
            kind, text = error
            if kind == "user":
                raise RlaifError(text)
            raise RuntimeError(f"the main process failed: {text}")
    return result if share_result or state.is_main_process else None


def sharded_weights(accelerator) -> bool:
    """Whether the trainer's weights are sharded across processes (FSDP, DeepSpeed ZeRO-3): then only a
    collective call, made by every process alike, can run the model."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and getattr(plugin, "zero_stage", 0) == 3


@contextlib.contextmanager
def main_lock(state: PartialState, run):
    """The run folder's lock, held by the main process (:meth:`rlaif.rundir.RunDir.lock`) for the whole block.

    A lock that cannot be taken is an error on every process.
    """
    with contextlib.ExitStack() as stack:
        on_main(state, lambda: stack.enter_context(run.lock()), share_result=False)
        yield


# ---------------------------------------------------------------- evidence for the tests


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors' values (name order), for comparing one model's weights across processes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def rank_logging() -> bool:
    return bool(os.environ.get(RANK_LOG_ENV))


def rank_log(state: PartialState, event: str, **values: Any) -> None:
    """With ``RLAIF_RANK_LOG=DIR`` set, append ``{event, rank, processes, ...values}`` to ``DIR/rank<N>.jsonl``.

    Every process writes its own file: the test of several processes reads what each one did (which prompts
    it generated and judged, the digest of the adapter it ended with). Off by default.
    """
    if not rank_logging():
        return
    folder = os.environ[RANK_LOG_ENV]
    row = {"event": event, "rank": state.process_index, "processes": state.num_processes, **values}
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"rank{state.process_index}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
