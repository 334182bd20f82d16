"""Evaluation batches on Ray workers (``--executor ray``), with the records of a local run.

The Classifier goes into Ray's object store once; each worker is an actor that deserializes its
own copy, sets its torch threads to its share of the CPUs, moves the model to its GPU where the
cluster has GPUs (one worker per GPU by default), prepares the frozen inference copy on the
batch the engine prepared it on, and then attacks whatever batch it is sent. Each worker has one
batch in flight; a worker that finishes gets the next one, so slow and fast batches even out.
Results come back to the engine as they finish (it checkpoints them and restores batch order).

A worker that dies (its process killed, its node lost) is replaced by a fresh actor and its
batch sent again, up to ``retries`` times per batch; finished batches are never lost. An error
the attack raises is re-raised here as it is (the same error as a local run would raise).

By default a local Ray instance is started in this process (``num_cpus`` = this machine's
CPUs, no dashboard, quiet logs) and kept until the process exits; ``address`` connects to an
existing cluster instead, and a Ray session already initialized in the process is used as it
is. Workers import aegis and the model's classes: on a cluster, install aegis on every node.
"""

from __future__ import annotations

import io
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from aegis.errors import AegisError, CapabilityError, ConfigError
from aegis.executors import Executor
from aegis.executors.batches import Batch

if TYPE_CHECKING:
    from torch import Tensor

    from aegis.executors.batches import BatchWork, Finished
    from aegis.model import Classifier

log = logging.getLogger(__name__)

RAY_MISSING = "--executor ray needs Ray: pip install 'aegis-robust[ray]'"

DEFAULT_RETRIES = 3
"""How many times a batch is sent again after its worker died."""

START_TIMEOUT = 300.0
"""Seconds the workers may take to start (import torch, load the model) before giving up."""


def import_ray() -> Any:
    """The ``ray`` module, or a one-line CapabilityError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise CapabilityError(RAY_MISSING) from None
    return ray


def local_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Plan:
    """How many workers, and what each asks Ray for and uses."""

    workers: int
    cpus: float  # Ray CPU resource per worker (a fraction if there are more workers than CPUs)
    gpus: float  # Ray GPU resource per worker (0 on a CPU-only cluster)
    threads: int  # torch threads per worker

    @classmethod
    def for_cluster(cls, resources: dict[str, float], workers: int | None) -> Plan:
        """Default: one worker per GPU if the cluster has GPUs, else one per CPU."""
        cpus = max(float(resources.get("CPU", 1.0)), 1.0)
        gpus = int(resources.get("GPU", 0.0))
        n = workers or gpus or int(cpus)
        share = cpus / n
        return cls(
            workers=n,
            cpus=float(math.floor(share)) if share >= 1 else round(share, 4),
            gpus=0.0 if gpus == 0 else min(1.0, round(gpus / n, 4)),
            threads=max(1, math.floor(share)),
        )


class RayExecutor(Executor):
    """Batches on ``workers`` Ray actors (default: one per GPU, else one per CPU).

    Args:
        workers: how many workers (actors); None for the default above.
        address: an existing Ray cluster (``ray://host:10001``, ``auto``); None starts a local
            instance (unless Ray is already initialized in this process).
        retries: how many times a batch is sent again after the worker running it died.
    """

    name = "ray"

    def __init__(
        self,
        *,
        workers: int | None = None,
        address: str | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        if retries < 0:
            raise ConfigError(f"retries must be >= 0, got {retries}")
        if address is not None and not address.strip():
            raise ConfigError("--ray-address is empty; give host:port, ray://host:port or auto")
        self.ray = import_ray()
        self.workers = workers
        self.address = address
        self.retries = retries
        self.plan: Plan | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "workers": self.workers, "address": self.address}
        if self.plan is not None:
            out.update(
                workers=self.plan.workers,
                threads_per_worker=self.plan.threads,
                gpus_per_worker=self.plan.gpus,
            )
        return out

    # -- the cluster ------------------------------------------------------------------------
    def connect(self) -> Plan:
        """Start or join Ray (once per process) and decide the workers."""
        ray = self.ray
        if not ray.is_initialized():
            try:
                ray.init(**self.init_options())
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a local instance"
                raise ConfigError(
                    f"cannot start Ray on {where} ({_one_line(exc)}); check --ray-address "
                    "(host:port, ray://host:port or auto) or drop it for a local instance"
                ) from None
        _register_serializers(ray)
        self.plan = Plan.for_cluster(dict(ray.cluster_resources()), self.workers)
        return self.plan

    def init_options(self) -> dict[str, Any]:
        """``ray.init``'s arguments: quiet, no dashboard; a local instance gets this machine's
        CPUs and this process's ``sys.path`` (its workers import what this process imports)."""
        quiet: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
            "ignore_reinit_error": True,
        }
        if self.address is not None:
            return {"address": self.address, **quiet}
        path = os.pathsep.join(p for p in sys.path if p)
        return {
            "num_cpus": max(self.workers or 0, local_cpus()),
            "runtime_env": {"env_vars": {"PYTHONPATH": path}},
            **quiet,
        }

    def _worker_class(self, plan: Plan) -> Any:
        return self.ray.remote(_Worker).options(
            num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=0, max_task_retries=0
        )

    # -- the batches ------------------------------------------------------------------------
    def run(
        self,
        model: Classifier,
        work: BatchWork,
        batches: Sequence[Batch],
        *,
        warmup: Tensor | None,
    ) -> Iterator[Finished]:
        if not batches:
            return
        ray = self.ray
        plan = self.connect()
        try:
            model_ref = ray.put(model)
        except Exception as exc:  # whatever the model holds that does not serialize
            raise CapabilityError(
                f"{model.name} cannot be sent to Ray workers ({_one_line(exc)}); use "
                "--executor local"
            ) from None
        # A clone: a slice of the data would serialize the whole dataset with it.
        warmup_ref = None if warmup is None else ray.put(warmup.detach().cpu().clone())
        spawn = self._worker_class(plan)

        def start() -> Any:
            return spawn.remote(model_ref, plan.threads, plan.gpus > 0, warmup_ref)

        actors = [start() for _ in range(plan.workers)]
        try:
            self._check_started(actors, model)
            queue = list(reversed(batches))  # pop() takes them in batch order
            inflight: dict[Any, tuple[Any, Batch, int]] = {}

            def submit(actor: Any, batch: Batch, attempt: int) -> None:
                inflight[actor.run.remote(work, _detached(batch))] = (actor, batch, attempt)

            for actor in actors:
                if queue:
                    submit(actor, queue.pop(), 0)
            while inflight:
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                actor, batch, attempt = inflight.pop(ref)
                try:
                    finished: Finished = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the attack raised: raise it here
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, Exception):
                        raise cause from None
                    raise
                except ray.exceptions.RayError as exc:  # the worker died: replace it, resend
                    if attempt >= self.retries:
                        raise AegisError(
                            f"the Ray worker attacking the batch at index {batch.start} died "
                            f"{_times(attempt + 1)} ({_one_line(exc)}); finished batches are "
                            "kept with --out (add --resume to go on)"
                        ) from None
                    log.warning(
                        "Ray worker died on the batch at index %d (%s); sending it again",
                        batch.start,
                        type(exc).__name__,
                    )
                    ray.kill(actor, no_restart=True)
                    actors[actors.index(actor)] = fresh = start()
                    submit(fresh, batch, attempt + 1)  # a fresh worker that fails counts too
                    continue
                yield finished
                if queue:
                    submit(actor, queue.pop(), 0)
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)

    def _check_started(self, actors: list[Any], model: Classifier) -> None:
        """Wait for the workers to load the model; say why one could not."""
        ray = self.ray
        try:
            infos = ray.get([a.ready.remote() for a in actors], timeout=START_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(
                f"Ray started no {len(actors)} workers in {START_TIMEOUT:.0f} s (cluster: "
                f"{ray.cluster_resources()}); lower --workers or free the cluster"
            ) from None
        except ray.exceptions.RayError as exc:
            raise CapabilityError(
                f"a Ray worker could not load {model.name} ({_one_line(exc)}); "
                "install aegis and the model's code on every node, or use --executor local"
            ) from None
        here = model.describe()["inference"]
        for info in infos:
            if info["device"] == str(model.device) and info["inference"] != here:
                log.warning(
                    "Ray worker %s serves no-gradient calls with %s, this process with %s: "
                    "records may differ from a local run",
                    info["pid"],
                    info["inference"],
                    here,
                )


class _Worker:
    """One Ray actor: its own copy of the model, on its own device, with its torch threads."""

    def __init__(self, model: Classifier, threads: int, gpu: bool, warmup: Tensor | None) -> None:
        from aegis._alloc import keep_freed_memory

        torch.set_num_threads(max(1, threads))
        if gpu and torch.cuda.is_available() and model.device.type == "cpu":
            model.move_to("cuda")  # Ray shows each GPU worker only its own GPU
        if model.device.type == "cpu":
            keep_freed_memory()
        if warmup is not None:
            model.prepare_frozen(warmup.to(model.device, torch.float32))
        self.model = model

    def ready(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "device": str(self.model.device),
            "threads": torch.get_num_threads(),
            "inference": self.model.describe()["inference"],
        }

    def run(self, work: BatchWork, batch: Batch) -> Finished:
        return work(self.model, batch)  # records and inputs come back on the CPU


def _detached(batch: Batch) -> Batch:
    """The batch with its own copies of its rows (a slice would serialize all the data)."""

    def own(t: Tensor) -> Tensor:
        return t.detach().cpu().clone()

    t = batch.targets
    return Batch(batch.start, own(batch.x), own(batch.y), None if t is None else own(t))


def _script_to_bytes(module: torch.jit.ScriptModule) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(module, buf)  # type: ignore[no-untyped-call]
    return buf.getvalue()


def _script_from_bytes(data: bytes) -> torch.jit.ScriptModule:
    return torch.jit.load(io.BytesIO(data))  # type: ignore[no-untyped-call,no-any-return]


def _register_serializers(ray: Any) -> None:
    """TorchScript modules do not pickle; they travel as TorchScript archives (which keep
    weights, strides, requires_grad and the train/eval mode)."""
    from torch.jit._script import RecursiveScriptModule
    from torch.jit._trace import TopLevelTracedModule

    for cls in (RecursiveScriptModule, TopLevelTracedModule):
        ray.util.register_serializer(
            cls, serializer=_script_to_bytes, deserializer=_script_from_bytes
        )


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """The root cause's type and the last line of its message (Ray's messages are long)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(exc).__name__}: {text}"[:limit] if text else type(exc).__name__


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"
