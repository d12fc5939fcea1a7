"""Independent calls of one function, run in this process, in local worker processes or on a
Ray cluster: what a sweep's points and a plan's probes are.

    with Executor(workers=None, ray_address=None) as ex:
        results = ex.map(run_point, [(trace, config, "paged"), ...])   # in call order

An `Executor` is reusable across batches (a plan's bisection submits one batch per round),
so local workers and a Ray connection are started once. Arguments travel to the workers
whole: the driver loads a trace once and ships it, so workers need only the installed
`kvpager`, not the trace file (a Ray cluster can run work whose trace sits on the laptop
that submitted it). On Ray each distinct argument object is put in the object store once.

Local workers are started with the "spawn" method: the driver may hold threads (Rich's
progress bar refresh, Ray's client), and forking a threaded process can deadlock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

Progress = Callable[[int, int], None]  # (calls done, calls total)


class RayUnavailableError(RuntimeError):
    """`--ray` was asked for but Ray is not installed."""


def check_workers(workers: int | None) -> int:
    """`workers` (None: one per CPU) validated; raises ValueError naming it."""
    if workers is None:
        return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return workers


def check_ray_address(ray_address: str | None) -> None:
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address):
        raise ValueError(f"ray_address must be 'local' or a cluster address, got "
                         f"{ray_address!r}")


class Executor:
    """Runs batches of independent calls (see the module docstring).

    Args:
        workers: local processes (None: os.cpu_count(); 1 runs in this process). With
            `ray_address` "local", the CPUs of the private Ray instance; ignored for a
            cluster address.
        ray_address: None for local processes; "local" to start a private Ray instance;
            else the address of a running cluster ("auto", "host:6379", "ray://host:10001").
    """

    def __init__(self, workers: int | None = None, ray_address: str | None = None) -> None:
        self.workers = check_workers(workers)
        check_ray_address(ray_address)
        self.ray_address = ray_address
        self._pool: ProcessPoolExecutor | None = None
        self._ray: Any = None  # the ray module, once connected
        self._owns_ray = False
        self._refs: dict[int, tuple[object, Any]] = {}  # id(arg) -> (arg, object ref)
        self._remotes: dict[Callable, Any] = {}
        self.used = "inline"  # the kind that ran work, for the record
        self._widest = 1  # the most calls of one batch run in processes

    # ---- the record ---------------------------------------------------------------------
    def describe(self) -> dict:
        """What ran the calls: {"kind": "inline" | "processes" | "ray", ...}."""
        if self.ray_address is not None:
            return {"kind": "ray", "address": self.ray_address,
                    "workers": self.workers if self.ray_address == "local" else None}
        if self.used == "processes":
            return {"kind": "processes", "workers": min(self.workers, self._widest)}
        return {"kind": "inline", "workers": 1}

    # ---- running ------------------------------------------------------------------------
    def map(self, fn: Callable[..., Any], calls: Sequence[tuple],
            progress: Progress | None = None) -> list:
        """`[fn(*args) for args in calls]`, run in parallel; a call's error is raised here
        (the other calls of the batch are cancelled). `fn` must be a module-level function
        (it is pickled by reference)."""
        if not calls:
            return []
        if self.ray_address is not None:
            return self._map_ray(fn, calls, progress)
        if self.workers == 1 or len(calls) == 1:
            out = []
            for done, args in enumerate(calls, start=1):
                out.append(fn(*args))
                if progress is not None:
                    progress(done, len(calls))
            return out
        return self._map_processes(fn, calls, progress)

    def _map_processes(self, fn, calls, progress) -> list:
        import multiprocessing

        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
        self.used = "processes"
        self._widest = max(self._widest, len(calls))
        futures: dict[Future, int] = {self._pool.submit(fn, *args): i
                                      for i, args in enumerate(calls)}
        out: list = [None] * len(calls)
        pending, done = set(futures), 0
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    out[futures[f]] = f.result()  # re-raises a worker's error here
                    done += 1
                    if progress is not None:
                        progress(done, len(calls))
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        return out

    def _connect_ray(self):
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise RayUnavailableError("--ray needs Ray, which is not installed: pip install "
                                      "'kvpager[ray]' (or 'ray')") from None
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            if self.ray_address == "local":
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.ray_address, log_to_driver=False)
        self._ray = ray
        return ray

    def _ref(self, arg: object):
        """The object-store reference of a large argument, put once (small ones go as
        they are)."""
        if isinstance(arg, (int, float, str, bool, type(None))):
            return arg
        held = self._refs.get(id(arg))
        if held is None:
            held = (arg, self._ray.put(arg))  # keeps `arg` alive, so its id stays its own
            self._refs[id(arg)] = held
        return held[1]

    def _map_ray(self, fn, calls, progress) -> list:
        ray = self._connect_ray()
        remote = self._remotes.get(fn)
        if remote is None:
            remote = self._remotes[fn] = ray.remote(num_cpus=1, max_retries=0)(fn)
        refs = {remote.remote(*(self._ref(a) for a in args)): i
                for i, args in enumerate(calls)}
        out: list = [None] * len(calls)
        pending, done = list(refs), 0
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            for ref in finished:
                try:
                    out[refs[ref]] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    for p in pending:
                        ray.cancel(p)
                    cause = getattr(exc, "cause", None)
                    raise (cause if isinstance(cause, Exception) else exc) from None
                done += 1
                if progress is not None:
                    progress(done, len(calls))
        return out

    # ---- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Stop the local workers and the Ray instance this executor started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._ray is not None:
            self._refs.clear()
            if self._owns_ray:
                self._ray.shutdown()
            self._ray = None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
