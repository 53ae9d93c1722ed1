"""Every device busy: the clips of one video restored on several devices at once, handed back in clip order.

    with ClipPool(ModelSpec(weights_dir), ["cuda:0", "cuda:1"]) as pool:
        restorer = VideoRestorer(clips=pool)
        result = restorer.restore("in.mp4", "out.mp4", VideoOptions(clip_frames=pool.clip_frames, seed=1))

One worker process per device (spawned: CUDA cannot be forked), each with its own copy of the model. The process
that decodes, blends and encodes (the restorer's) hands each worker at most `PER_WORKER` clips at a time, and has
at most `in_flight` clips out at once, so memory stays bounded however many clips finish out of order; clips go to
the least busy worker, and come back in clip order to the one writer. A clip's noise follows (seed, clip index),
so it comes out the same on whichever worker restores it (on identical devices: on the CPU the result also depends
on the number of threads, which is why every CPU worker gets the same number).

A worker's error (out of memory, say) is raised in the restorer's process with its message; a worker that dies is
reported as such. A video abandoned half-way (cancelled, failed) leaves no work behind: the workers drop the clips
of a run that is over.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
import torch.multiprocessing

from seedvr_local.options import VaeTile
from seedvr_local.video.clips import ClipTask, LocalClips, RestoredClip, longest_clip

if TYPE_CHECKING:
    from seedvr_local.upscaler import Upscaler

#: Clips handed to one worker at a time: the one it restores and the next, so it never waits for the restorer's
#: process, which may be busy encoding.
PER_WORKER = 2
#: Seconds between checks that the workers are alive while waiting for one.
_POLL_S = 1.0
#: Seconds a worker is given to stop before it is killed: an idle one stops at once, a busy one would finish its
#: clip, which nobody is waiting for any more.
_STOP_S = 5.0
#: The run id of no run: workers drop every clip they are handed while it is current.
_NO_RUN = 0

#: Builds the model a worker restores with, from the device's name ("cpu", "cuda:1"). Must pickle (a top-level
#: function, a `functools.partial` of one, or an object such as `ModelSpec`): it is sent to the worker processes.
ModelLoader = Callable[[str], "Upscaler"]


@dataclass(frozen=True)
class ModelSpec:
    """The model of `seedvr-local upscale`'s options: a weights directory, or None for the tiny model."""

    weights_dir: Path | None
    dtype: str | None = None
    kernels: str | None = None
    compile: bool = False
    offload: str = "auto"  # as `Upscaler`'s

    def __call__(self, device: str) -> "Upscaler":
        from seedvr_local.compilation import compile_pipeline
        from seedvr_local.upscaler import Upscaler

        if self.weights_dir is None:
            upscaler = Upscaler.tiny(device=device, dtype=self.dtype, kernels=self.kernels, offload=self.offload)
        else:
            upscaler = Upscaler.from_weights_dir(
                self.weights_dir, device=device, dtype=self.dtype, kernels=self.kernels, offload=self.offload
            )
        if self.compile:
            compile_pipeline(upscaler.pipeline)
        return upscaler


def worker_names(devices: Sequence[str]) -> list[str]:
    """What each worker is called in results and messages: its device, numbered when a device has several."""
    return [device if devices.count(device) == 1 else f"{device}#{i}" for i, device in enumerate(devices)]


def cpu_threads(devices: Sequence[str]) -> int:
    """Threads for each CPU worker: the machine's cores shared among them."""
    cpu_workers = sum(torch.device(device).type == "cpu" for device in devices)
    return max(1, (os.cpu_count() or 1) // max(1, cpu_workers))


class WorkerError(RuntimeError):
    """A worker stopped or failed in a way that is not about the input (it died, or could not load the model)."""


@dataclass
class _Worker:
    name: str
    device: str
    inbox: Any  # a multiprocessing queue of messages for this worker
    process: Any
    assigned: int = 0  # clips handed to it and not answered yet
    description: str = ""


class ClipPool:
    """Restores clips on one worker process per device in `devices`; a `ClipRunner` for `VideoRestorer(clips=)`.

    `load(device)` builds each worker's model (`ModelSpec`, or any picklable `ModelLoader`); `vae_tile` as for
    images. `threads`: torch threads of each CPU worker (default `cpu_threads(devices)`). `in_flight`: clips out at
    once (default `PER_WORKER` per worker). Starting waits until every worker has its model; use as a context
    manager, or call `close()`. One video at a time, from one thread (as `VideoRestorer`)."""

    def __init__(
        self,
        load: ModelLoader,
        devices: Sequence[str],
        vae_tile: VaeTile = "auto",
        threads: int | None = None,
        in_flight: int | None = None,
    ):
        if not devices:
            raise ValueError("a clip pool needs at least one device")
        context = torch.multiprocessing.get_context("spawn")
        self.in_flight = in_flight or PER_WORKER * len(devices)
        self.results = context.Queue()
        self.current_run = context.Value("q", _NO_RUN)
        self._last_run = _NO_RUN
        threads = threads or cpu_threads(devices)
        self.workers: list[_Worker] = []
        try:
            for index, (name, device) in enumerate(zip(worker_names(devices), devices)):
                inbox = context.Queue()
                cpu = torch.device(device).type == "cpu"
                process = context.Process(
                    target=_serve, name=f"seedvr-clips-{name}", daemon=True,
                    args=(index, name, device, load, vae_tile, threads if cpu else None, inbox, self.results,
                          self.current_run),
                )  # fmt: skip
                process.start()
                self.workers.append(_Worker(name, device, inbox, process))
            for _ in self.workers:
                kind, index, payload = self._receive(("ready", "failed"))
                if kind == "failed":
                    raise payload
                self.workers[index].description = payload
        except BaseException:
            self.close()
            raise

    @property
    def descriptions(self) -> list[str]:
        """Each worker's model, as `Upscaler.description` says it."""
        return [worker.description for worker in self.workers]

    def clip_frames(self, width: int, height: int) -> int:
        """The longest clip (4n+1 frames) of a `width x height` output that fits on every device now: a
        `VideoOptions.clip_frames`."""
        for worker in self.workers:
            worker.inbox.put(("plan", width, height))
        answers = [self._receive(("plan",)) for _ in self.workers]
        errors = [payload for _, _, payload in answers if isinstance(payload, BaseException)]
        if errors:
            raise errors[0]
        return min(payload for _, _, payload in answers)

    def run(self, tasks: Iterator[ClipTask]) -> Iterator[RestoredClip]:
        self._last_run += 1
        run = self.current_run.value = self._last_run
        finished: dict[int, RestoredClip] = {}  # restored out of order, waiting for an earlier clip
        submitted = returned = 0
        exhausted = False
        try:
            while True:
                while not exhausted and submitted - returned < self.in_flight:
                    worker = min(self.workers, key=lambda w: w.assigned)
                    if worker.assigned >= PER_WORKER:
                        break
                    task = next(tasks, None)
                    if task is None:
                        exhausted = True
                        break
                    worker.inbox.put(("clip", run, task))
                    worker.assigned += 1
                    submitted += 1
                if returned in finished:
                    yield finished.pop(returned)
                    returned += 1
                elif exhausted and returned == submitted:
                    return
                else:
                    _, _, (clip_run, payload) = self._receive(("clip",))
                    if clip_run != run:
                        continue  # a clip of an earlier, abandoned run
                    if isinstance(payload, BaseException):
                        raise payload
                    finished[payload.index] = payload
        finally:
            self.current_run.value = _NO_RUN  # the workers drop what is left of this run

    def _receive(self, kinds: tuple[str, ...]) -> tuple[str, int, Any]:
        """The next message of one of `kinds` (`(kind, worker index, payload)`), counting clip answers of any run.
        Raises `WorkerError` when a worker has died."""
        while True:
            try:
                kind, index, payload = self.results.get(timeout=_POLL_S)
            except queue.Empty:
                for worker in self.workers:
                    if not worker.process.is_alive():
                        raise WorkerError(
                            f"the video worker on {worker.name} stopped (exit code {worker.process.exitcode})"
                        ) from None
                continue
            if kind == "clip":
                self.workers[index].assigned -= 1
            if kind in kinds:
                return kind, index, payload

    def close(self) -> None:
        """Stop the workers; one still restoring a clip after `_STOP_S` seconds is killed."""
        for worker in self.workers:
            if worker.process.is_alive():
                worker.inbox.put(None)
        for worker in self.workers:
            worker.process.join(_STOP_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self.workers = []

    def __enter__(self) -> "ClipPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else an exception of its broad kind with its message (an exception whose
    constructor takes more than a message does not unpickle)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        kind = ValueError if isinstance(exc, ValueError) else RuntimeError
        return kind(str(exc) or type(exc).__name__)


def _serve(index, name, device, load, vae_tile, threads, inbox, results, current_run) -> None:
    """A worker process: load the model on `device`, then answer plan and clip messages until told to stop."""
    # Ctrl-C reaches the whole process group; the restorer's process handles it and stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if torch.device(device).type == "cuda":
            torch.cuda.set_device(device)  # no stray context on GPU 0 from a worker of another GPU
        upscaler = load(device)
        clips = LocalClips(upscaler.pipeline, planner=upscaler.planner, vae_tile=vae_tile, name=name)
    except Exception as exc:
        results.put(("failed", index, WorkerError(f"the video worker on {name} could not load the model: {exc}")))
        return
    results.put(("ready", index, upscaler.description))
    while (message := inbox.get()) is not None:
        if message[0] == "plan":
            _, width, height = message
            try:
                answer = longest_clip(upscaler.planner, width, height, vae_tile)
            except Exception as exc:
                answer = _portable(exc)
            results.put(("plan", index, answer))
            continue
        _, run, task = message
        if run != current_run.value:
            results.put(("clip", index, (run, None)))  # the run is over: nothing to do
            continue
        try:
            restored = clips.restore(task)
        except Exception as exc:
            restored = _portable(exc)
        results.put(("clip", index, (run, restored)))
