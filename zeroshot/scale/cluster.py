"""Connecting to Ray and sizing the work to the cluster's resources."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..errors import UsageError

INSTALL_HINT = 'pip install "zeroshot[ray]"'
# Ray's own defaults start a dashboard, copy every worker's log lines to the driver's stderr
# (stdout here is data) and print progress bars: all off for a command-line run.
_QUIET_ENV = {"RAY_DEDUP_LOGS": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def require_ray() -> ModuleType:
    """The ``ray`` module, or a one-line :class:`UsageError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs ray[data]
    except ImportError:
        raise UsageError(f"--ray needs Ray Data, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class RaySettings:
    """How the work is spread. ``None`` fields are sized from ``ray.cluster_resources()``:
    ``actors`` one per GPU (``num_gpus=1`` each) on a cluster with GPUs, else one per node;
    ``actor_cpus`` the CPUs each actor reserves and its torch threads (GPU actors 1; CPU actors
    1 reserved, the node's cores as threads, with the decode tasks beside it at low priority, as
    a local CPU run does); ``decode_cpus`` per decode task (a batch of images each)."""

    actors: int | None = None
    decode_cpus: float = 1.0
    actor_cpus: float | None = None
    gpus: bool | None = None  # None: GPU actors when the cluster has GPUs
    batch_size: int | None = None  # None: EmbedSettings.batch_size, else 256 on GPU actors, 32 on CPU

    def resolved(self) -> RaySettings:
        """These settings with every ``None`` sized to the connected cluster."""
        ray = require_ray()
        resources = ray.cluster_resources()
        gpus_total = int(resources.get("GPU", 0))
        gpus = self.gpus if self.gpus is not None else gpus_total > 0
        cpus = float(resources.get("CPU", 0))
        nodes = max(1, sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0))
        actor_cpus = self.actor_cpus or 1.0
        # CPU actors: one per node, leaving room for at least one decode task.
        fitting = max(1, int((cpus - self.decode_cpus) // actor_cpus))
        actors = self.actors or (max(1, gpus_total) if gpus else min(nodes, fitting))
        if actors * actor_cpus + self.decode_cpus > cpus:
            raise UsageError(f"--ray-actors {actors} x --ray-actor-cpus {actor_cpus:g} plus one decode task "
                             f"({self.decode_cpus:g} CPU) need more than the cluster's {cpus:g} CPUs; ask for fewer")
        if gpus and actors > gpus_total:
            raise UsageError(f"--ray-actors {actors}: the cluster has {gpus_total} GPU(s), one per actor")
        return RaySettings(actors=actors, decode_cpus=self.decode_cpus, actor_cpus=actor_cpus,
                           gpus=gpus, batch_size=self.batch_size or (256 if gpus else 32))


def _reachable(address: str, option: str | None = None, timeout: float = 10.0) -> None:
    """A ``host:port`` that nothing answers on is refused in seconds (Ray itself waits minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as err:
        where = address if option in (None, address) else f"{option} (RAY_ADDRESS={address})"
        raise UsageError(f"--ray {where}: cannot connect to a Ray cluster ({err.strerror or err}); start one with "
                         "'ray start --head' or give its address (host:port)") from None


def connect(address: str = "auto", **init: Any) -> ModuleType:
    """Join the Ray cluster at ``address`` (host:port or ray://...), or with ``auto``: the one
    ``RAY_ADDRESS`` names (as under ``ray job submit``), else one started on this machine by
    ``ray start``, else a local Ray started for this run; ``local`` always starts a local one.
    Already connected (e.g. in a Ray job or a notebook): kept as it is. ``init``: more
    ``ray.init`` arguments (e.g. ``num_cpus`` for a local Ray)."""
    ray = require_ray()
    if not ray.is_initialized():
        for key, value in _QUIET_ENV.items():
            os.environ.setdefault(key, value)
        target = None if address in ("", "auto") else address
        _reachable(address if target else os.environ.get("RAY_ADDRESS", ""), address)
        try:
            ray.init(address=target, **{"include_dashboard": False, "log_to_driver": False,
                                        "logging_level": "ERROR", **init})
        except (ConnectionError, ValueError, RuntimeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UsageError(f"--ray {address}: cannot connect to a Ray cluster ({first[:200]}); start one with "
                             "'ray start --head' or give its address (host:port)") from None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its progress lines: the CLI has its own
    return ray
