"""Connecting to a Ray runtime and checking a trial's resource request against it.

Addresses: none (a local runtime with this machine's CPUs and GPUs), ``auto`` (a runtime already
running on this machine), ``host:port`` (a cluster's GCS) or ``ray://host:10001`` (Ray Client).

Authentication: Ray 2.60 turns token authentication on for the runtimes it starts. losstune
keeps it on: when it connects to an explicit address it sets ``RAY_AUTH_MODE=token`` (unless you
set RAY_AUTH_MODE yourself), and Ray reads the cluster's token from ``RAY_AUTH_TOKEN`` or
``~/.ray/auth_token``. A cluster started with ``RAY_AUTH_MODE=disabled`` needs the same setting on
the driver. Without the token mode, Ray waits 20 s and then blames a crashed instance.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trainables.errors import UserError
from tuner.cluster import privacy

__all__ = ["Runtime", "connect", "check_resources", "check_address", "probe_address", "parse_address",
           "local_resources", "redact", "unreachable", "check_storage"]

_CONNECT_TIMEOUT_S = 3.0


def redact(text: str) -> str:
    """Drop credentials from a URI-ish string: scheme://user:secret@host → scheme://***@host."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", str(text))


@dataclass
class Runtime:
    """The Ray runtime a job runs on: its (redacted) address, whether this process started it, its
    resources, and the local processes it started (to stop them, and to notice they went down)."""

    address: str  # what the user asked for, without credentials
    started_here: bool
    resources: dict[str, float]
    processes: list[Any] = field(default_factory=list)  # a runtime started here: its processes (Popen)

    def went_down(self, within_s: float = 1.0) -> bool:
        """Whether a runtime started here is going down with the driver. Its processes run in a session
        of their own, but a service manager that stops every process of a service (systemd's control
        group, Slurm's job step) sends them SIGTERM too: the first of them (Ray's log monitor) ends at
        once. A runtime this job only joined, or whose processes are not known, is taken to be up."""
        deadline = time.monotonic() + within_s
        while self.processes:
            if any(p.poll() is not None for p in self.processes):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return False

    def shutdown(self) -> None:
        """End what this job started; a runtime it only joined stays up."""
        import ray

        if ray.is_initialized() and (self.started_here or self.address != "local"):
            ray.shutdown()


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of ``host:port`` or ``ray://host:port``; anything else is one line."""
    bad = UserError(f"--address '{redact(address)}' is not host:port, ray://host:port or auto "
                    "(a port is a number from 1 to 65535)")
    target = address.removeprefix("ray://")
    if not target or any(c.isspace() for c in target) or "/" in target.rstrip("/"):
        raise bad
    try:
        parts = urlsplit("//" + target.rstrip("/"))
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number, or out of range
        raise bad from None
    if not host or not port:
        raise bad
    return host, port


def check_address(address: str | None) -> None:
    """What can be said about ``--address`` without connecting: its form (before any data is read)."""
    if address not in (None, "", "local", "auto"):
        parse_address(address)


def unreachable(host: str, port: int, *, timeout_s: float = _CONNECT_TIMEOUT_S) -> str | None:
    """Why a TCP connection to host:port fails within a few seconds, or None when it opens: a
    service that is down fails in seconds here, not after a client's minutes of retries."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return str(exc.strerror or exc)


def _probe(address: str) -> None:
    why = unreachable(*parse_address(address))
    if why:
        raise UserError(f"Ray runtime at '{redact(address)}' is unreachable ({why}); start it with "
                        "`ray start --head`, check host and port, or drop --address to run locally")


def probe_address(address: str | None) -> None:
    """What can be said about ``--address`` before Ray is imported: its form, and whether anything
    answers there (``auto``: whether `ray start` left a runtime on this machine)."""
    check_address(address)
    if address in (None, "", "local"):
        return
    if address == "auto":
        if os.environ.get("RAY_ADDRESS"):
            return  # Ray's own variable names the runtime: ray.init checks it
        # where `ray start` writes the runtime's address (Ray's own lookup: RAY_TMPDIR, else TMPDIR, else /tmp)
        tmp = Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray" / "ray_current_cluster"
        if not tmp.is_file():
            raise UserError("--address auto: no Ray runtime runs on this machine (no `ray start` left one); "
                            "start one with `ray start --head` or drop --address to run locally")
        return
    _probe(address)


def connect(address: str | None, *, num_cpus: int | None = None, log_to_driver: bool = True) -> Runtime:
    """Start a local runtime (``address`` None) or connect to one; every failure is one line.
    ``log_to_driver=False`` keeps the workers' output in Ray's session logs (a quiet job: a worker's
    ``SystemExit`` at shutdown is not news; a failed trial's error is in its folder and the summary)."""
    import ray

    if address in (None, "", "local"):
        if ray.is_initialized():  # a runtime this process already started (a notebook, the tests): share it
            return Runtime("local", False, _resources())
        # address="local": a runtime of its own, even when `ray start` left a cluster on this machine (Ray's
        # default, address=None, would join that one: its latest cluster is read from RAY_TMPDIR). Its processes
        # inherit the privacy defaults, and it starts without the dashboard process that would only probe the
        # cloud-metadata services (tuner/cluster/privacy.py says why): nothing in losstune uses a local dashboard.
        privacy.apply()
        with privacy.local_runtime_without_probes(), _runtime_in_own_session():
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     log_to_driver=log_to_driver, configure_logging=True, logging_level="WARNING")
        return Runtime("local", True, _resources(), processes=_local_processes())
    if address != "auto":
        _probe(address)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        ray.init(address=address, log_to_driver=log_to_driver, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = ("no Ray runtime runs on this machine; start one with `ray start --head` or drop --address"
                if address == "auto" else "is it a Ray head node, and does RAY_AUTH_MODE/RAY_AUTH_TOKEN match it?")
        raise UserError(f"cannot connect to Ray at '{redact(address)}': {redact(first)}; {hint}") from None
    return Runtime(redact(address), False, _resources())


@contextmanager
def _runtime_in_own_session() -> Iterator[None]:
    """Around ``ray.init(address="local")``: the runtime's processes (GCS, raylet, monitors, and the
    workers the raylet starts) run in a session of their own, so that a signal sent to the driver's
    whole process group (``timeout``, a shell's job control, a service manager's stop) reaches the
    driver only, which then stops the trials through Ray and saves the job. In the driver's group,
    Ray's processes would get that SIGTERM too and the driver would wait a minute for a GCS that is
    going away, then exit 1. They still end with the driver: Ray starts them with the kernel's
    parent-death signal (``PR_SET_PDEATHSIG``), whatever their session.

    Ray 2.60 starts them through ``ray._private.services.ConsolePopen`` (a ``subprocess.Popen``), which
    takes no such option: for the duration of this block it is a subclass that adds
    ``start_new_session=True``. A Ray without that class is left as it is (tests/tuner/test_faults.py
    checks the sessions of a real runtime's processes)."""
    from ray._private import services

    original = getattr(services, "ConsolePopen", None)
    if original is None or sys.platform == "win32":
        yield
        return

    class OwnSession(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnSession
    try:
        yield
    finally:
        services.ConsolePopen = original


def _local_processes() -> list[Any]:
    """The processes of the runtime this process started (Ray's node object, private in Ray 2.60: any
    change there leaves them unknown rather than failing the job)."""
    try:
        import ray

        return [info.process for infos in ray._private.worker._global_node.all_processes.values() for info in infos]
    except Exception:
        return []


def local_resources() -> dict[str, float]:
    """What a local runtime (``ray.init()`` without an address) declares: this machine's CPUs and
    visible GPUs. Known without starting Ray, so an impossible request fails in a second."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no usable torch build: Ray would find no GPU either
        gpus = 0
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


def _resources() -> dict[str, float]:
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}


def check_resources(runtime: Runtime, *, cpus: float, gpus: float) -> dict[str, Any]:
    """Refuse a per-trial request the runtime could never schedule (instead of waiting forever)."""
    have_cpu, have_gpu = runtime.resources.get("CPU", 0.0), runtime.resources.get("GPU", 0.0)
    if cpus <= 0 and gpus <= 0:
        raise UserError("--cpus-per-trial and --gpus-per-trial are both 0; a trial needs some resource")
    if gpus > 0 and have_gpu == 0:
        raise UserError(f"--gpus-per-trial {gpus:g} asks for GPUs but the Ray runtime at '{runtime.address}' has none; "
                        "use --gpus-per-trial 0 or connect to a cluster with GPUs")
    if gpus > have_gpu:
        raise UserError(f"--gpus-per-trial {gpus:g} is more than the {have_gpu:g} GPUs "
                        f"of the runtime at '{runtime.address}'")
    if gpus > 1 and gpus != int(gpus):
        raise UserError(f"--gpus-per-trial {gpus:g}: above 1 it must be a whole number of GPUs")
    if cpus > have_cpu:
        raise UserError(f"--cpus-per-trial {cpus:g} is more than the {have_cpu:g} CPUs "
                        f"of the runtime at '{runtime.address}'")
    per_trial = [have_cpu / cpus if cpus > 0 else float("inf"), have_gpu / gpus if gpus > 0 else float("inf")]
    return {"CPU": cpus, "GPU": gpus, "max_parallel": int(min(per_trial))}


def check_storage(runtime: Runtime, storage_path: str, *, shared: bool) -> None:
    """On a runtime of several nodes Ray copies each checkpoint from the node that wrote it straight
    to the storage path: a folder that exists only on the head fails at the first checkpoint saved
    elsewhere (ray#37177). So a plain local folder is refused there, before any trial, unless the
    user declares it a mount every node shares."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not shared and "://" not in storage_path:
        raise UserError(f"the Ray runtime at '{runtime.address}' has {len(nodes)} nodes but --storage-path "
                        f"'{storage_path}' is a local folder that the other nodes cannot reach; pass a folder "
                        "mounted on every node with --shared-storage (NFS), or run on a single node")
