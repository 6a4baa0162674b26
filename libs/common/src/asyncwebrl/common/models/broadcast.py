"""Weights by broadcast: the process-group protocol of SGLang's distributed weight update, both sides.

SGLang's ``/init_weights_update_group {master_address, master_port, rank_offset, world_size,
group_name, backend}`` has each server join a torch process group of its own (not the default
one): a ``tcp://master_address:master_port`` rendezvous whose store rank 0 hosts, keys under a
``PrefixStore(group_name)``, the group made by ``_new_process_group_helper`` (SGLang's
``init_custom_process_group``). The trainer side (here: weightsync, on the trainer's behalf) is
rank 0 and must join the same way, at the same time, for the rendezvous to complete.

``/update_weights_from_distributed {names, dtypes, shapes, group_name, load_format, ...}`` then has
every server receive, in the order of ``names``, one ``broadcast(src=0)`` per tensor of that
dtype (a torch attribute name: ``"float32"``, ``"bfloat16"``) and shape; or, with ``load_format
"flattened_bucket"``, one broadcast of all of them as a flat uint8 buffer, each tensor's bytes
after the previous one's. The sender calls ``send`` with the same list, in the same order.

The same code runs with backend ``"gloo"`` (CPU tensors, what the tests run) and ``"nccl"``
(CUDA tensors: move them to the device first); only gloo has been run here.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

DEFAULT_GROUP = "weight_update_group"  # SGLang's default group_name
FLATTENED_BUCKET = "flattened_bucket"  # SGLang's load_format for one flat buffer per request
LOAD_FORMATS = (None, FLATTENED_BUCKET)

NamedTensors = Sequence[tuple[str, torch.Tensor]]


class BroadcastError(RuntimeError):
    """A group that could not be made, or a broadcast that failed (peer gone, timeout, bad spec)."""


# --- the group ----------------------------------------------------------------------------------

def init_group(master_address: str, master_port: int, rank: int, world_size: int,
               group_name: str = DEFAULT_GROUP, backend: str = "gloo",
               timeout_s: float = 1800.0) -> dist.ProcessGroup:
    """Join (rank 0: host) the group ``group_name`` of ``world_size`` ranks; blocks until every rank
    has joined or ``timeout_s`` passes. The default process group is neither needed nor touched."""
    from torch.distributed.distributed_c10d import (Backend, PrefixStore, _new_process_group_helper, _world,
                                                    rendezvous)

    if not group_name:
        raise BroadcastError("group_name must not be empty")
    if not 0 <= rank < world_size:
        raise BroadcastError(f"rank {rank} is not in [0, {world_size})")
    name = Backend(backend)
    if not dist.is_backend_available(name):
        # Before the rendezvous, so that a bad backend fails at once rather than after every rank joined.
        raise BroadcastError(f"backend {backend!r} is not available in this torch build")
    timeout = datetime.timedelta(seconds=timeout_s)
    url = f"tcp://{_host(master_address)}:{int(master_port)}"
    try:
        store, rank, world_size = next(rendezvous(url, rank, world_size, timeout=timeout))
        store.set_timeout(timeout)
        store = PrefixStore(group_name, store)
        pg, _ = _new_process_group_helper(world_size, rank, [], name, store, group_name=group_name,
                                          backend_options=None, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, ValueError, DistStoreError...
        # A new exception without the old traceback: the frames holding rank 0's store are freed now,
        # which closes its port, so the ranks still waiting on it fail at once instead of at their timeout.
        raise BroadcastError(f"{type(exc).__name__}: {str(exc)[:500]}") from None
    _world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


def destroy_group(pg: dist.ProcessGroup | None) -> None:
    """Leave and free a group made by ``init_group`` (never raises: a broken group is gone anyway)."""
    if pg is None:
        return
    try:
        dist.destroy_process_group(pg)
    except Exception:  # noqa: BLE001
        from torch.distributed.distributed_c10d import _world

        _world.pg_group_ranks.pop(pg, None)


def free_port(host: str = "127.0.0.1", ports: Iterable[int] = (0,)) -> int:
    """A port of ``ports`` (0: any) nobody listens on at ``host`` now."""
    for port in ports:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise BroadcastError(f"no free port at {host} among {list(ports)[:3]}...")


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


# --- what travels -------------------------------------------------------------------------------

def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``: what SGLang turns back with ``getattr(torch, name)``."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    value = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"{str(name)[:40]!r} is not a torch dtype")
    return value


def specs(tensors: NamedTensors) -> dict:
    """The ``names``, ``dtypes`` and ``shapes`` fields of an update request for ``tensors``."""
    return {"names": [n for n, _ in tensors], "dtypes": [dtype_name(t.dtype) for _, t in tensors],
            "shapes": [list(t.shape) for _, t in tensors]}


def buckets(tensors: NamedTensors, max_bytes: int) -> list[list[tuple[str, torch.Tensor]]]:
    """Consecutive runs of ``tensors`` of at most ``max_bytes`` each (a larger tensor alone);
    ``max_bytes <= 0``: one run. Each run is one update request and its broadcasts."""
    if max_bytes <= 0:
        return [list(tensors)] if tensors else []
    out: list[list[tuple[str, torch.Tensor]]] = []
    size = 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if not out or (size + nbytes > max_bytes and out[-1]):
            out.append([])
            size = 0
        out[-1].append((name, t))
        size += nbytes
    return out


def _flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in tensors])


# --- sender (rank 0) and receiver ---------------------------------------------------------------

def send(pg: dist.ProcessGroup, tensors: NamedTensors, load_format: str | None = None) -> int:
    """Rank 0: broadcast ``tensors`` in order, as the receivers of ``specs(tensors)`` expect.
    Returns the bytes sent."""
    if load_format not in LOAD_FORMATS:
        raise BroadcastError(f"load_format {load_format!r} is not one of {LOAD_FORMATS}")
    try:
        if load_format == FLATTENED_BUCKET:
            flat = _flatten([t for _, t in tensors])
            dist.broadcast(flat, src=0, group=pg)
            return flat.numel()
        sent = 0
        for _, t in tensors:
            t = t.contiguous()
            dist.broadcast(t, src=0, group=pg)
            sent += t.numel() * t.element_size()
        return sent
    except Exception as exc:  # noqa: BLE001
        raise BroadcastError(f"broadcast failed: {type(exc).__name__}: {str(exc)[:500]}") from None


def receive(pg: dist.ProcessGroup, names: Sequence[str], dtypes: Sequence[str], shapes: Sequence[Sequence[int]],
            load_format: str | None = None, device: str | torch.device = "cpu") -> list[tuple[str, torch.Tensor]]:
    """A receiving rank: fresh tensors of the given specs, filled by rank 0's broadcasts."""
    if not len(names) == len(dtypes) == len(shapes):
        raise BroadcastError(f"{len(names)} names, {len(dtypes)} dtypes and {len(shapes)} shapes")
    if load_format not in LOAD_FORMATS:
        raise BroadcastError(f"load_format {load_format!r} is not one of {LOAD_FORMATS}")
    kinds = [parse_dtype(d) for d in dtypes]
    try:
        if load_format == FLATTENED_BUCKET:
            sizes = [torch.Size(s).numel() * k.itemsize for s, k in zip(shapes, kinds)]
            flat = torch.empty(sum(sizes), dtype=torch.uint8, device=device)
            dist.broadcast(flat, src=0, group=pg)
            out, at = [], 0
            for name, shape, kind, size in zip(names, shapes, kinds, sizes):
                out.append((name, flat[at:at + size].view(kind).reshape(shape)))
                at += size
            return out
        out = [(n, torch.empty(list(s), dtype=k, device=device)) for n, s, k in zip(names, shapes, kinds)]
        handles = [dist.broadcast(t, src=0, group=pg, async_op=True) for _, t in out]
        for h in handles:
            h.wait()
        return out
    except Exception as exc:  # noqa: BLE001
        raise BroadcastError(f"broadcast failed: {type(exc).__name__}: {str(exc)[:500]}") from None


# --- names: checkpoint keys to the running model's --------------------------------------------

def model_names(model: torch.nn.Module, names: Iterable[str]) -> dict[str, str]:
    """Each name as the running model's ``state_dict`` calls it. A sender sends checkpoint names (what
    SGLang's ``load_weights`` takes); transformers renames some on load (Qwen2.5-VL's ``model.layers.*``
    is ``model.language_model.layers.*`` in the model), so apply its renamings to those the model does
    not know as they are. Names that match nothing stay as they are (the caller refuses them)."""
    own = set(model.state_dict())
    out: dict[str, str] = {}
    transforms = None
    for name in names:
        if name in own:
            out[name] = name
            continue
        if transforms is None:
            transforms = _renamings(model)
        renamed = name
        for t in transforms:
            renamed, _ = t.rename_source_key(renamed)
        out[name] = renamed
    return out


def _renamings(model: torch.nn.Module) -> list:
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:
        return []
    return [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
