"""The state file's writer process: the running bot's SQLite work off its event loop's GIL.

A thread of the bot's own process (:class:`~zapi_channel.delivery.sqlite.SqliteThread`) keeps
the event loop free while SQLite's C code and the disk flush run, but not while the thread runs
Python: binding a message's rows, its JSON, handing results back. That Python holds the one GIL
the event loop needs, and measured under a webhook load it cost the loop as much time as the
loop's own work per message. A child process has a GIL of its own: there the same work runs on
the other core, and the bot's process only pickles each operation and unpickles its outcome.

:class:`SqliteProcess` offers what :class:`SqliteThread` offers (``call``, ``submit``, ``run``,
``close``, the counters, the observers), with the same meaning, so the delivery above it does
not know which one it has. What changes is what an operation may be: it crosses to the child
pickled, so it must be a module-level function, or a :func:`functools.partial` of one over
picklable values (a lambda cannot), and so must its result and any exception it raises.

The protocol: two socket pairs, one each way, each carrying frames (a 4-byte length, then a
pickle). The bot sends a list of ``(id, operation, awaited)`` per event-loop iteration; the
child reads whatever is there (group commit, as in the thread), runs it as one batch and sends
back one frame: each operation's outcome by id and what the batch took. The first frame each
way is the connection: the bot sends how to open it, the child answers ``ready`` or the error.

Lifetime. The child is started in a session of its own, so that a Ctrl-C at the terminal reaches
only the bot, which stops it in its own time (after the last answers are marked). It ends when
the bot closes it, or when the bot's end of the sockets closes, which the kernel does when the
bot dies, ``kill -9`` included: nothing is left behind. It inherits the state file's ``flock``
and holds it until it exits, so a new bot cannot start on the file while a dying one's writer
still commits. It stops on SIGTERM, SIGINT and SIGHUP after the batch in progress. If it dies
on its own, what it was running fails (the webhook answers 503, and Z-API sends the message
again), and it is started again. It runs at a lower CPU priority than the bot
(:data:`NICENESS`): when the cores are short, the event loop goes first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import itertools
import logging
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from zapi_channel.delivery.sqlite import (
    CHECKPOINT_EVERY,
    MAX_BATCH,
    Batches,
    BatchObserver,
    CheckpointObserver,
    Operation,
    Sink,
    settle,
)
from zapi_channel.errors import StateUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
_HEADER = struct.Struct("!I")
#: An operation queued: its id, itself, and where its outcome goes.
_Queued = Tuple[int, Operation, Sink]
#: An operation as it crosses: its function's ``module:qualname``, args and keyword args.
_Described = Tuple[str, Tuple[Any, ...], Dict[str, Any]]
#: How long :meth:`SqliteProcess.close` waits for the child to finish what it was sent.
CLOSE_TIMEOUT_SECONDS = 30.0
#: Two restarts of a writer that died on its own are at least this far apart.
RESTART_INTERVAL_SECONDS = 5.0
# Socket buffers: a burst's frames queue here while the child runs the batch before them.
_BUFFER_BYTES = 4 * 1024 * 1024
# What one read takes at most; a frame of a batch is a few kilobytes.
_CHUNK = 64 * 1024
#: How much lower the child's CPU priority is than the bot's (``nice`` steps). On a machine with
#: few cores, under load, the bot's event loop, the writer and whatever else runs take turns on
#: the cores: the loop is the part that every webhook and every turn waits on, while the writer
#: only grows its next batch when it waits, which group commit turns into fewer commits. Measured
#: in the ingestion benchmark on 2 cores (bench/ingest.py): 55% of the bare handler's
#: throughput at the same priority, 58.6% at 5, 57.5% at 10. A step of 5 still gives the writer
#: about a quarter of a core that the loop also wants, so its commits keep up.
NICENESS = 5


class _Frames:
    """Reads length-prefixed frames from a socket; ``ended`` once the peer closed it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ended = False
        self._buffer = bytearray()
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)

    def read(self, timeout: Optional[float]) -> List[bytes]:
        """The frames complete with what arrived within ``timeout`` (None: at least one, or
        the end; 0: only what is there already)."""
        if timeout == 0 and self.sock.gettimeout() == 0.0:
            # A non-blocking socket that the event loop saw readable: no poll needed first.
            self._drain()
            return self._complete()
        frames = self._complete()
        while not frames and not self.ended:
            if not self._selector.select(timeout):
                break
            self._drain()
            frames = self._complete()
            if timeout == 0:
                break
        return frames

    def _drain(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.ended = True
                return
            self._buffer += chunk
            if len(chunk) < _CHUNK or not self._selector.select(0):
                return

    def close(self) -> None:
        self._selector.close()
        self.sock.close()

    def _complete(self) -> List[bytes]:
        frames: List[bytes] = []
        buffer, start = self._buffer, 0
        while len(buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + size
            if len(buffer) < end:
                break
            frames.append(bytes(buffer[start + _HEADER.size : end]))
            start = end
        if start:
            del buffer[:start]
        return frames


def _describe(operation: Operation) -> _Described:
    """``operation`` as its function's ``module:qualname`` and the arguments bound to it."""
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = {}
    function: Any = operation
    if isinstance(operation, functools.partial):
        function, args, kwargs = operation.func, operation.args, operation.keywords
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", "")
    if not isinstance(function, types.FunctionType) or not module or "<" in qualname:
        raise TypeError(
            f"{operation!r} is not a module-level function or a functools.partial of one: "
            "it cannot reach the writer process"
        )
    return f"{module}:{qualname}", args, kwargs


_functions: Dict[str, Callable[..., Any]] = {}


def _function(name: str) -> Callable[..., Any]:
    """The function ``name`` (``module:qualname``) names, imported once."""
    found = _functions.get(name)
    if found is None:
        module, _, qualname = name.partition(":")
        value: Any = importlib.import_module(module)
        for part in qualname.split("."):
            value = getattr(value, part)
        found = _functions[name] = value
    return found


def _fail(where: str, sinks: Sequence[Sink], why: str) -> None:
    failure = StateUnavailable(f"The writer process of {where} {why}", where=where)
    settle([(sink, False, failure) for sink in sinks])


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def _loads(data: bytes) -> Any:
    # Only frames of this bot's own processes, over socket pairs that nobody else holds.
    return pickle.loads(data)  # noqa: S301


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except RecursionError:
        # A deeply nested value (a callback field can be JSON nested hundreds of levels, as
        # deep as json.loads allowed): pickling recurses once or twice per level, unpickling
        # does not. Only this call gets the room, bounded so that the C stack stays far away.
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit * 4)
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            sys.setrecursionlimit(limit)


class SqliteProcess:
    """A child process that owns ``connect()``'s connection; see the module docstring.

    ``connect`` is pickled and run in the child, so it must be picklable itself (a
    :func:`functools.partial` of a module-level function). Whatever it raises is raised by the
    constructor. ``keep_fds``: descriptors the child inherits and holds while it runs (the state
    file's lock).

    The child's answers are read on the event loop that queued the operations
    (``add_reader``), so that no thread of this process takes the GIL for them: a reader
    thread would, at every answer, make the event loop wait to get the GIL back. Without a
    running loop (start-up, the command line, :meth:`close`), the caller reads them itself.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        where: str,
        checkpoint_every: int = CHECKPOINT_EVERY,
        keep_fds: Sequence[int] = (),
    ) -> None:
        self.where = where
        self.checkpoint_every = checkpoint_every
        #: Optional observers of the batches and checkpoints (the benchmark's trace).
        self.on_batch: Optional[BatchObserver] = None
        self.on_checkpoint: Optional[CheckpointObserver] = None
        #: Called once a writer that died was started again (from the event loop if there is
        #: one, else from the thread that started it).
        self.on_restart: Optional[Callable[[], None]] = None
        #: The child's counters, as its last answer gave them (see :class:`Batches`).
        self.commits = 0
        self.unflushed_commits = 0
        self.checkpoints = 0
        #: Writers that died on their own and were started again.
        self.restarts = 0
        #: Two starts of the writer are at least this far apart (a writer that keeps dying
        #: is not started in a busy loop).
        self.restart_interval = RESTART_INTERVAL_SECONDS
        self._connect = connect
        self._keep_fds = tuple(keep_fds)
        self._ids = itertools.count(1)
        # What the event loop queued in its current iteration, sent as one frame at its end.
        self._pending: List[_Queued] = []
        # Where each operation sent and not answered yet goes, by id: written by whoever sends,
        # under the send lock, and popped by whoever reads the answers.
        self._sent: Dict[int, Sink] = {}
        self._send_lock = threading.Lock()
        # Whoever reads the child's answers holds this: the event loop, or a blocked caller.
        self._receive_lock = threading.Lock()
        self._restart_lock = threading.Lock()
        self._closed = False
        self._stopping = False
        self._last_start = 0.0
        self._child: Optional[subprocess.Popen[bytes]] = None
        self._requests: Optional[socket.socket] = None
        self._writable: Optional[selectors.BaseSelector] = None
        self._frames: Optional[_Frames] = None
        self._ended = threading.Event()
        # The event loop that reads the answers, once one queued an operation.
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._start()

    def __repr__(self) -> str:
        return f"SqliteProcess({self.where!r})"

    @property
    def pid(self) -> Optional[int]:
        """The writer's process id, while it runs."""
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    # -- starting -----------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the child, hand it ``connect`` and wait until it is ready or failed."""
        self._last_start = time.monotonic()
        requests, child_requests = socket.socketpair()
        results, child_results = socket.socketpair()
        for sock in (requests, child_results):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER_BYTES)
        env = dict(os.environ)
        # The child imports what the operations name from where this process found it.
        env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
        try:
            child = subprocess.Popen(  # noqa: S603 - this interpreter, this module
                [
                    sys.executable,
                    "-m",
                    "zapi_channel.delivery.writer",
                    str(child_requests.fileno()),
                    str(child_results.fileno()),
                ],
                pass_fds=(child_requests.fileno(), child_results.fileno(), *self._keep_fds),
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            requests.close()
            results.close()
            raise StateUnavailable(
                f"Cannot start the writer process of {self.where}: {exc.strerror}",
                where=self.where,
            ) from exc
        finally:
            child_requests.close()
            child_results.close()
        frames = _Frames(results)
        try:
            requests.sendall(_frame(_dumps((self.where, self.checkpoint_every, self._connect))))
            answer = frames.read(None)
        except OSError:
            answer = []
        status, error = _loads(answer[0]) if answer else (None, None)
        if status != "ready":
            requests.close()
            frames.close()
            code = child.wait()
            if error is not None:
                raise error
            raise StateUnavailable(
                f"The writer process of {self.where} ended before it was ready (exit code "
                f"{code}); its errors are above.",
                where=self.where,
            )
        requests.setblocking(False)
        results.setblocking(False)
        writable = selectors.DefaultSelector()
        writable.register(requests, selectors.EVENT_WRITE)
        with self._send_lock:
            self._child, self._requests, self._writable = child, requests, writable
            self._frames = frames
        self._ended.clear()

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the answers on ``loop`` from now on (the loop this call runs on)."""
        frames = self._frames
        if frames is None or frames.ended:
            return
        if self._loop is not None and self._loop is not loop and not self._loop.is_closed():
            try:
                self._loop.remove_reader(frames.sock)
            except (RuntimeError, ValueError):  # that loop stopped, or it is another thread's
                logger.debug("Could not detach %r from its previous event loop", self)
        self._loop = loop
        loop.add_reader(frames.sock, self._readable)

    # -- queueing -----------------------------------------------------------------------------

    async def call(self, operation: Callable[[Any], T]) -> T:
        """Run ``operation`` in the child, inside its next commit; its result once committed."""
        if self._closed:
            raise StateUnavailable(f"{self.where} is closed", where=self.where)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._enqueue(loop, operation, future)
        return await future

    def submit(self, operation: Operation, *, what: str) -> None:
        """Queue ``operation`` without waiting for it (as :meth:`SqliteThread.submit`)."""
        if self._closed:
            logger.error("Could not %s: %s is closed", what, self.where)
            return
        self._enqueue(asyncio.get_running_loop(), operation, what)

    def run(self, operation: Callable[[Any], T]) -> T:
        """:meth:`call` for code that has no event loop (start-up, the command line)."""
        if self._closed:
            raise StateUnavailable(f"{self.where} is closed", where=self.where)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._send([(next(self._ids), operation, future)])
        if not self._loop_reads():
            while not future.done() and self._receive(None):
                pass
        return future.result()

    def _enqueue(self, loop: asyncio.AbstractEventLoop, operation: Operation, sink: Sink) -> None:
        if loop is not self._loop:
            self._attach(loop)
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((next(self._ids), operation, sink))

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._send(batch)

    def _send(self, batch: List[_Queued]) -> None:
        # Each operation crosses as its function's name and its arguments, not as a pickled
        # function or partial: pickle looks a function up by name at every dump, which,
        # measured, cost more than the arguments themselves. The ids travel apart from the
        # operations' pickle, so that operations the child cannot load still fail by id
        # rather than leaving their callers waiting.
        described: List[_Described] = []
        kept: List[_Queued] = []
        for item in batch:
            try:
                described.append(_describe(item[1]))
            except TypeError as exc:  # a lambda, a method: a programming error, told at once
                settle([(item[2], False, TypeError(f"{self.where}: {exc}"))])
                continue
            kept.append(item)
        batch = kept
        try:
            operations = _dumps(described)
        except Exception:  # noqa: BLE001 - which arguments cannot cross: those fail alone
            batch, described = self._picklable(batch, described)
            operations = _dumps(described)
        if not batch:
            return
        ids = [op_id for op_id, _, _ in batch]
        awaited = [not isinstance(sink, str) for _, _, sink in batch]
        payload = _dumps((ids, awaited, operations))
        with self._send_lock:
            sock, writable = self._requests, self._writable
            if sock is None or writable is None:
                _fail(self.where, [sink for _, _, sink in batch], "is not running")
                return
            # Registered before the frame leaves: the answer may come back at once.
            for op_id, _, sink in batch:
                self._sent[op_id] = sink
            data = memoryview(_frame(payload))
            try:
                while data:
                    try:
                        data = data[sock.send(data) :]
                    except BlockingIOError:
                        # The child is behind by a full socket buffer (megabytes of frames):
                        # wait for it rather than reorder. A disk that stalls that long stalls
                        # every webhook anyway, since each waits for its commit.
                        writable.select(1.0)
            except OSError:
                pass  # the child is gone: what was sent to it fails once its end is read

    def _picklable(
        self, batch: List[_Queued], described: List[_Described]
    ) -> Tuple[List[_Queued], List[_Described]]:
        kept: List[_Queued] = []
        crossing: List[_Described] = []
        for item, description in zip(batch, described):
            try:
                _dumps(description)
            except Exception as exc:  # noqa: BLE001 - a programming error, reported to the caller
                failure = TypeError(f"An operation of {self.where} cannot be pickled: {exc}")
                settle([(item[2], False, failure)])
                continue
            kept.append(item)
            crossing.append(description)
        return kept, crossing

    # -- answers ------------------------------------------------------------------------------

    def _loop_reads(self) -> bool:
        """Whether the event loop reads the answers now, and this caller need not."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return False
        try:
            return asyncio.get_running_loop() is not loop  # on the loop itself: it is blocked
        except RuntimeError:
            return True

    def _readable(self) -> None:
        """The event loop's reader: what the child answered so far."""
        if not self._receive_lock.acquire(blocking=False):
            return  # a blocked caller is reading them (start-up, close)
        try:
            self._receive_unlocked(0, on_loop=True)
        finally:
            self._receive_lock.release()

    def _receive(self, timeout: Optional[float]) -> bool:
        """Read and hand out answers (as the caller, not the loop); False once the child ended."""
        with self._receive_lock:
            return self._receive_unlocked(timeout, on_loop=False)

    def _receive_unlocked(self, timeout: Optional[float], *, on_loop: bool) -> bool:
        frames = self._frames
        if frames is None:
            return False
        for frame in frames.read(timeout):
            self._answer(_loads(frame), on_loop)
        if frames.ended:
            self._end(frames)
            return False
        return True

    def _answer(self, answer: Tuple[Any, ...], on_loop: bool) -> None:
        outcomes, took, operations, awaited, checkpoint, counters = answer
        self.commits, self.unflushed_commits, self.checkpoints = counters
        sent = self._sent
        results = [(sent.pop(op_id, None), ok, value) for op_id, ok, value in outcomes]
        loop = self._loop if on_loop else None
        elsewhere: List[Tuple[Sink, bool, Any]] = []
        for sink, ok, value in results:
            if sink is None:
                continue
            if loop is not None and isinstance(sink, asyncio.Future) and sink.get_loop() is loop:
                # On that loop already: no wake-up through its self-pipe needed.
                if not sink.done():
                    if ok:
                        sink.set_result(value)
                    else:
                        sink.set_exception(value)
            else:
                elsewhere.append((sink, ok, value))
        if elsewhere:
            settle(elsewhere)
        if self.on_batch is not None:
            self.on_batch(took, operations, awaited)
        if checkpoint is not None and self.on_checkpoint is not None:
            self.on_checkpoint(checkpoint)

    def _end(self, frames: _Frames) -> None:
        """The child's end of the answers closed: it exited, or died."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.remove_reader(frames.sock)
            except (RuntimeError, ValueError):  # another thread's loop, or stopping
                loop.call_soon_threadsafe(_remove_reader, loop, frames.sock)
        with self._send_lock:
            child, requests = self._child, self._requests
            if self._frames is not frames:
                return  # handled already
            self._frames = None
            self._requests = None
            if self._writable is not None:
                self._writable.close()
                self._writable = None
            lost, self._sent = list(self._sent.values()), {}
        if requests is not None:
            requests.close()
        frames.close()
        _fail(self.where, lost, "ended")
        code = child.wait() if child is not None else None
        self._ended.set()
        if self._stopping:
            return
        logger.error(
            "The writer process of %s ended on its own (exit code %s); starting it again. "
            "What it was writing was not kept (webhooks answered 503: Z-API sends them again).",
            self.where,
            code,
        )
        threading.Thread(
            target=self._restart, args=(loop,), name="zapi-channel-writer-restart", daemon=True
        ).start()

    def _restart(self, loop: Optional[asyncio.AbstractEventLoop]) -> None:
        with self._restart_lock:
            wait = self.restart_interval - (time.monotonic() - self._last_start)
            if wait > 0:
                time.sleep(wait)
            if self._stopping:
                return
            try:
                self._start()
            except Exception:  # logged; every operation from now on fails (503)
                logger.exception("Could not start the writer process of %s again", self.where)
                return
            self.restarts += 1
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._restarted, loop)
                return
            except RuntimeError:
                pass  # closed meanwhile
        self._loop = None
        if self.on_restart is not None:
            self.on_restart()

    def _restarted(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = None
        self._attach(loop)
        if self.on_restart is not None:
            self.on_restart()

    # -- stopping -----------------------------------------------------------------------------

    def close(self) -> None:
        """Finish what was sent, then end the child (its connection closes with it)."""
        if not self._closed:
            self._closed = True
            self._flush()  # a loop iteration's last operations are not left behind
        self._stopping = True
        with self._restart_lock:  # a restart in progress finishes first; none starts after
            pass
        with self._send_lock:
            sock, child = self._requests, self._child
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_WR)  # the end of the child's input: it finishes
                except OSError:
                    pass
        deadline = time.monotonic() + CLOSE_TIMEOUT_SECONDS
        if self._loop_reads():
            self._ended.wait(CLOSE_TIMEOUT_SECONDS)
        while self._frames is not None and time.monotonic() < deadline:
            self._receive(max(0.0, deadline - time.monotonic()))
        if child is not None and child.poll() is None:
            logger.error("The writer process of %s did not finish in time; stopping it", self.where)
            child.kill()
            child.wait()
        frames = self._frames
        if frames is not None:
            self._end(frames)


def _remove_reader(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    try:
        loop.remove_reader(sock)
    except (RuntimeError, ValueError):
        pass


# -- the child's side ---------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by a stop signal while the child waits for input."""


def serve(requests: socket.socket, results: socket.socket) -> int:
    """The child's main loop; its exit code."""
    frames = _Frames(requests)
    state = {"waiting": False, "stop": False}

    def stop(signum: int, frame: Any) -> None:
        state["stop"] = True
        if state["waiting"]:
            raise _Stop

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    first = frames.read(None)
    if not first:
        return 0
    where, checkpoint_every, connect = _loads(first[0])
    try:
        connection = connect()
        batches = Batches(connection, where=where, checkpoint_every=checkpoint_every)
    except BaseException as exc:  # noqa: BLE001 - the bot raises it
        try:
            payload = _dumps(("failed", exc))
        except Exception:  # noqa: BLE001 - an error that cannot be pickled: its text crosses
            payload = _dumps(("failed", StateUnavailable(str(exc), where=where)))
        results.sendall(_frame(payload))
        return 1
    results.sendall(_frame(_dumps(("ready", None))))
    queued: List[Tuple[int, bool, Operation]] = []
    refused: List[Tuple[int, bool, Any]] = []

    def take(frame: bytes) -> None:
        ids, awaited, pickled = _loads(frame)
        try:
            described = _loads(pickled)
        except Exception as exc:  # noqa: BLE001 - those operations fail, the others run
            failure = TypeError(f"The writer process cannot unpickle an operation: {exc!r}")
            refused.extend((op_id, False, failure) for op_id in ids)
            return
        for op_id, flag, (name, args, kwargs) in zip(ids, awaited, described):
            try:
                function = _function(name)
            except Exception as exc:  # noqa: BLE001 - that operation fails, the others run
                refused.append((op_id, False, TypeError(f"Cannot load {name}: {exc!r}")))
                continue
            queued.append((op_id, flag, functools.partial(function, *args, **kwargs)))

    try:
        while not state["stop"]:
            if not queued and not refused:
                state["waiting"] = True
                try:
                    got = frames.read(None)
                except _Stop:
                    break
                finally:
                    state["waiting"] = False
                if not got:
                    break  # the bot closed us, or died
                for frame in got:
                    take(frame)
            for frame in frames.read(0):  # group commit: whatever else arrived meanwhile
                take(frame)
            batch, queued = queued[:MAX_BATCH], queued[MAX_BATCH:]
            ids = [op_id for op_id, _, _ in batch]
            operations = [operation for _, _, operation in batch]
            awaited = any(flag for _, flag, _ in batch)
            started = time.perf_counter()
            outcomes = batches.run(operations, awaited) if operations else []
            took = time.perf_counter() - started
            checkpoint = batches.maybe_checkpoint(bool(queued)) if operations else None
            answered, refused = refused, []
            answer = (
                [(op_id, ok, value) for op_id, (ok, value) in zip(ids, outcomes)] + answered,
                took,
                len(batch),
                awaited,
                checkpoint,
                (batches.commits, batches.unflushed_commits, batches.checkpoints),
            )
            try:
                payload = _dumps(answer)
            except Exception:  # noqa: BLE001 - a result or an error that cannot be pickled
                payload = _dumps(_picklable_answer(answer))
            try:
                results.sendall(_frame(payload))
            except OSError:
                break  # the bot is gone; what it sent after this is not answered anyway
    finally:
        connection.close()
    return 0


def _picklable_answer(answer: Tuple[Any, ...]) -> Tuple[Any, ...]:
    outcomes: List[Tuple[int, bool, Any]] = []
    for op_id, ok, value in answer[0]:
        try:
            _dumps(value)
        except Exception as exc:  # noqa: BLE001 - its text crosses instead
            ok, value = False, TypeError(f"An outcome cannot be pickled: {exc}")
        outcomes.append((op_id, ok, value))
    return (outcomes, *answer[1:])


def main(argv: Sequence[str]) -> int:
    requests = socket.socket(fileno=int(argv[0]))
    results = socket.socket(fileno=int(argv[1]))
    requests.setblocking(True)
    try:
        os.nice(NICENESS)
    except OSError:  # pragma: no cover - refused where priorities are fixed; it runs as is
        pass
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return serve(requests, results)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
