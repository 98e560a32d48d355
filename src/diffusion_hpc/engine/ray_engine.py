"""The Ray engine (``--engine ray``): shards spread over Ray worker actors, the same dataset as local.

- The driver (this process) checks the inputs and the output folder exactly as the local engine
  does, holds the folder's lock for the whole run (workers write shards under it, they do not
  take it; :mod:`diffusion_hpc.data.lock`), lists the pending shards (all, or a part's;
  ``--resume`` skips committed ones), and starts ``workers`` actors (:class:`ShardWorker`): each builds the pipeline's models once.
- It hands each idle worker a whole shard by number. The worker makes it with the local engine's
  code (:meth:`~diffusion_hpc.pipeline.generate.Generator.run_shard`: seeds from (run seed, sample
  index), the run's batch composition) and commits it itself with the atomic writer into the
  output folder, which every worker must see (one machine, or a shared file system). On a
  cluster the config's paths (poses, guides, backbones, backgrounds) must name the same files on
  every node: give them absolute, on the shared file system (a local Ray shares the driver's cwd).
- A worker that dies (``RayActorError``: killed, out of memory, node lost) is replaced by a new
  actor (it loads its models while the others keep working) and its shard is made again. A shard is committed only when complete (its tar renamed
  into place last), so a redo neither duplicates nor drops a sample. A shard that kills
  ``MAX_ATTEMPTS`` workers stops the run with its number.
- The driver shows one progress bar (samples/s, failures by reason), then consolidates the
  manifest and writes run.json and the preview (:meth:`Generator.finish`).

If the driver itself is killed, the committed shards stay; ``dhpc generate ... --resume`` (with
either engine) makes the rest. ``ray`` is imported only when this engine runs.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data.writer import DatasetWriter
from diffusion_hpc.errors import DhpcError
from diffusion_hpc.pipeline.generate import GenerateResult, Generator, ShardResult, failure_counts

log = logging.getLogger(__name__)

#: a worker that dies this many times on one shard stops the run (the shard itself kills workers)
MAX_ATTEMPTS = 3
#: test hook, ``SHARD:MARKER``: the worker making shard SHARD kills its own process (SIGKILL) after
#: its first batch, if the file MARKER does not exist yet (it creates it first: one kill per run)
KILL_HOOK_ENV = "DHPC_TEST_KILL_SHARD"


class ShardWorker:
    """One Ray worker: the pipeline's models, loaded once, and the dataset writer of ``out``."""

    def __init__(self, config: dict, out: str, threads: int, kill_hook: str | None = None) -> None:
        self.error: BaseException | None = None
        self.kill_hook = kill_hook
        try:
            import torch

            torch.set_num_threads(threads)  # the driver's count: CPU float32 bytes depend on it
            self.generator = Generator(GenerateConfig.model_validate(config), progress=False)
            self.generator.load_models()
            self.writer = DatasetWriter(out, self.generator.dataset_yaml(out), resume=True)
        except Exception as exc:  # raised again by ready(): the driver reports it as is
            self.error = exc

    def ready(self) -> int:
        if self.error is not None:
            raise self.error
        return os.getpid()

    def run_shard(self, s: int) -> ShardResult:
        on_batch = None
        if self.kill_hook:
            shard, marker = self.kill_hook.split(":", 1)
            if int(shard) == s and not os.path.exists(marker):
                Path(marker).write_text(str(os.getpid()))

                def on_batch(count: int) -> None:
                    os.kill(os.getpid(), 9)

        return self.generator.run_shard(s, self.writer, on_batch=on_batch)

    def what_ran(self, out: str) -> dict:
        return self.generator.what_ran(out)


def _connect(config: GenerateConfig) -> bool:
    """Join the cluster of ``ray_address`` or start a local Ray; True when this call connected."""
    import ray

    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    if config.ray_address is not None:
        _check_reachable(config.ray_address)
        try:
            ray.init(address=config.ray_address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise DhpcError(f"--ray-address {config.ray_address}: cannot join a Ray cluster there ({exc}); start "
                            "one with `ray start --head` and pass its address, or leave --ray-address out to "
                            "start Ray on this machine") from None
    else:
        ray.init(num_cpus=config.workers or os.cpu_count() or 1, **quiet)
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT address must accept a connection (Ray itself retries an unreachable one for minutes)."""
    import socket

    if address == "auto":
        return
    host, sep, port = address.split("://")[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise DhpcError(f"--ray-address {address}: expected auto or HOST:PORT (e.g. 10.0.0.5:6379, the address "
                        "`ray start --head` prints)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise DhpcError(f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); start the head "
                        "with `ray start --head` and pass its address, or leave --ray-address out to start Ray "
                        "on this machine") from None


def _worker_count(config: GenerateConfig, pending: int) -> int:
    """Workers to start: ``config.workers``, else what the cluster holds; never more than the shards."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    if config.gpus_per_worker and config.gpus_per_worker > gpus:
        raise DhpcError(f"--gpus-per-worker {config.gpus_per_worker}: the Ray cluster has {gpus:g} GPUs; "
                        "pass a smaller value, or 0 for CPU workers")
    fit = int(gpus // config.gpus_per_worker) if config.gpus_per_worker else int(cpus)
    workers = config.workers if config.workers is not None else max(1, fit)
    if workers > max(1, fit):
        raise DhpcError(f"--workers {workers}: the Ray cluster has room for {fit} (CPUs {cpus:g}, GPUs {gpus:g}, "
                        f"{config.gpus_per_worker:g} GPUs and 1 CPU per worker); pass --workers {max(1, fit)} or "
                        "add nodes")
    return max(1, min(workers, pending))


def _torch_threads() -> int:
    """torch's intra-op thread count in this process (the local engine's), which every worker takes.

    Convolutions on the CPU in float32 sum in an order that depends on the thread count, so a
    diffusion image made with 1 thread differs in a few bytes from one made with 2 (measured with
    the tiny backbone; the render baseline is unaffected). Workers use the driver's count, so a
    Ray run equals the local run on the driver's machine; several workers on one machine then
    share its cores (slower on the CPU; GPU kernels do not depend on it).
    """
    import torch

    return torch.get_num_threads()


def _cause(exc: BaseException) -> BaseException:
    """The user's exception inside a Ray task error (a DhpcError stays one line)."""
    from ray.exceptions import RayTaskError

    return exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc


def run_ray(config: GenerateConfig, out: str | Path, resume: bool = False, progress: bool = True) -> GenerateResult:
    """Generate the run's shards into ``out`` on Ray workers; see the module docstring."""
    from tqdm.auto import tqdm

    generator = Generator(config, progress=progress)  # inputs checked here, before Ray starts
    # the driver holds the output folder's lock (workers write under it), released at the end
    with generator.plan(out, resume) as plan:
        done: list[ShardResult] = []
        what_ran = None
        workers, ready_seconds, run_seconds, redone = 0, 0.0, 0.0, 0
        if plan.pending:
            import ray
            from ray.exceptions import RayActorError

            started = _connect(config)
            actors: list = []
            try:
                workers = _worker_count(config, len(plan.pending))
                remote = ray.remote(num_cpus=1, num_gpus=config.gpus_per_worker or 0, max_restarts=0)(ShardWorker)
                payload = config.model_dump(mode="json")
                kill_hook = os.environ.get(KILL_HOOK_ENV)
                threads = _torch_threads()

                t0 = time.perf_counter()
                actors = [remote.remote(payload, str(plan.out.resolve()), threads, kill_hook) for _ in range(workers)]
                try:
                    ray.get([a.ready.remote() for a in actors])
                except Exception as exc:
                    raise _cause(exc) from None
                ready_seconds = time.perf_counter() - t0
                log.info("%d Ray workers ready in %.1f s", workers, ready_seconds)
                plan.writer.open()
                bar = tqdm(total=plan.samples(plan.own), initial=plan.samples(plan.own) - plan.samples(plan.pending),
                           unit="sample", desc=f"generate (ray, {workers} workers)", disable=not progress)
                # running: ref -> (shard, worker); shard None: a replacement worker loading its models
                queue, idle, running = deque(plan.pending), list(range(workers)), {}
                attempts: dict[int, int] = {}
                t0 = time.perf_counter()
                while queue or running:
                    while queue and idle:
                        w, s = idle.pop(), queue.popleft()
                        running[actors[w].run_shard.remote(s)] = (s, w)
                    (ref,), _ = ray.wait(list(running), num_returns=1)
                    s, w = running.pop(ref)
                    if s is None:  # a replacement worker is ready (or failed to load its models)
                        try:
                            ray.get(ref)
                        except Exception as exc:
                            raise _cause(exc) from None
                        idle.append(w)
                        continue
                    try:
                        result = ray.get(ref)
                    except RayActorError as exc:
                        attempts[s] = attempts.get(s, 0) + 1
                        if attempts[s] >= MAX_ATTEMPTS:
                            raise DhpcError(f"shard {s} (samples {plan.ranges[s].start}..{plan.ranges[s].stop - 1}) lost "
                                            f"its worker {attempts[s]} times (last: {str(exc).splitlines()[0]}); see "
                                            "the Ray worker logs, then rerun with --resume") from None
                        log.warning("worker %d died making shard %d (%s); making it again on a new worker",
                                    w, s, str(exc).splitlines()[0])
                        ray.kill(actors[w])
                        actors[w] = remote.remote(payload, str(plan.out.resolve()), threads, kill_hook)
                        running[actors[w].ready.remote()] = (None, w)  # loads while the others work
                        queue.appendleft(s)
                        redone += 1
                        bar.set_postfix({**failure_counts(done), "redone": redone}, refresh=False)
                        continue
                    except Exception as exc:
                        raise _cause(exc) from None
                    done.append(result)
                    idle.append(w)
                    bar.update(result.count)
                    postfix = failure_counts(done)
                    if redone:
                        postfix["redone"] = redone
                    if postfix:
                        bar.set_postfix(postfix, refresh=False)
                bar.close()
                run_seconds = time.perf_counter() - t0
                what_ran = ray.get(actors[0].what_ran.remote(str(plan.out.resolve())))
            finally:
                for actor in actors:
                    ray.kill(actor)
                if started:
                    ray.shutdown()
        else:
            plan.writer.open()
        execution = {"engine": "ray", "workers": workers, "gpus_per_worker": config.gpus_per_worker,
                     "cluster": "address" if config.ray_address else "local",
                     # workers started and their models loaded; then the shards, first submitted to last back
                     "ready_seconds": ready_seconds, "shards_seconds": run_seconds, "redone_shards": redone,
                     "worker_shard_seconds": sum(r.seconds for r in done)}
        return generator.finish(plan, done, what_ran=what_ran, execution=execution)
