"""Run trusted job code on untrusted candidate losses, in a jailed child process.

Candidate code never runs in the caller's process. A `Sandbox` keeps one zygote
process (lossearch.sandbox.zygote) that has imported torch; each `run` forks a fresh
child from it that jails itself (own session, network namespace or audit hook,
`nobody` user when root, resource limits, stripped environment, private working
directory) and runs one job. The parent enforces the wall-clock limit by
killing the child's whole process group, removes the working directory, and
classifies every way a child can end into a `Failure`.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from typing import Mapping, Sequence

from lossearch.failures import Failure
from lossearch.sandbox.interface import SandboxError, SandboxLimits, SandboxResult

ENV_ALLOW_LIST = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES")
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH")


def clean_environment() -> dict[str, str]:
    """The few variables a child needs; nothing that looks like a secret survives."""
    env = {name: os.environ[name] for name in ENV_ALLOW_LIST if name in os.environ}
    env = {name: value for name, value in env.items() if not any(m in name.upper() for m in SECRET_MARKERS)}
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above lossearch/
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONSAFEPATH"] = "1"  # the zygote's cwd (the shared temp dir) stays off sys.path and its read roots
    env["OMP_NUM_THREADS"] = "1"
    return env


class Sandbox:
    """A zygote process and the means to run jailed jobs through it; use as a context manager."""

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self._zygote: subprocess.Popen | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake: tuple[int, int] | None = None  # a pipe `close` writes to, so a reader in select() returns
        self._handed_over: list = []  # what `close` left for the reader to close once it returns
        self._buffer = b""
        self._ready = False
        # jobs may run side by side (`run` from several threads): one thread at a time reads the
        # zygote's messages and files each under its request id for whichever thread waits on it
        self._condition = threading.Condition()
        self._inbox: dict[int, list[dict]] = {}
        self._reading = False
        self._next_id = 0
        self._running: dict[int, int | None] = {}  # request id -> child pid (None until it exists), for `cancel`
        self._cancelled = False

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the zygote ----------------------------------------------------------------------
    def start(self) -> "Sandbox":
        """Start the zygote now, without waiting for it: its second of importing torch then
        overlaps with the caller's own start-up. `run` starts it when nobody has."""
        with self._condition:
            if self._zygote is None or self._zygote.poll() is not None:
                self._close()  # a zygote that died between jobs leaves its pipes and selector to close
                zygote = subprocess.Popen(
                    [sys.executable, "-m", "lossearch.sandbox.zygote"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    env=clean_environment(), cwd=tempfile.gettempdir(), start_new_session=True,
                )
                assert zygote.stdin is not None and zygote.stdout is not None  # both PIPE, above
                wake, selector = os.pipe(), selectors.DefaultSelector()
                selector.register(zygote.stdout, selectors.EVENT_READ)
                selector.register(wake[0], selectors.EVENT_READ, "wake")
                self._zygote, self._wake, self._selector = zygote, wake, selector
                self._buffer = b""
                self._ready = False
        return self

    def _wait_ready(self) -> None:
        with self._condition:
            if not self._ready:
                if self._read_message(time.monotonic() + 120) is None:
                    self.close()
                    raise SandboxError("the sandbox's zygote did not start within 120 s")
                self._ready = True

    def close(self) -> None:
        """Stop the zygote and everything it started."""
        with self._condition:
            self._close()
            self._condition.notify_all()

    def _close(self) -> None:
        for request_id, pid in self._running.items():
            if pid is not None:  # a child has a session of its own: the zygote's group does not hold it
                _kill_group(pid)
            self._inbox.setdefault(request_id, []).append({"lost": True})  # its waiter hears the zygote is gone
        self._running.clear()
        if self._zygote is not None:
            if self._zygote.returncode is None:  # once reaped, its pid may belong to someone else
                try:
                    os.killpg(self._zygote.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._zygote.wait()
            # Closing a descriptor that another thread's select() watches drops it from the
            # selector without waking that thread, which then sleeps out its whole deadline (a
            # child forked a moment ago may still hold the zygote's end of the pipe, so no
            # end-of-file comes first). So a reader is woken instead, and closes them itself.
            wake = self._wake
            assert wake is not None  # made with the zygote, in `start`
            handles = [self._selector, self._zygote.stdin, self._zygote.stdout, *wake]
            if self._reading:
                os.write(wake[1], b"!")
                self._handed_over.extend(handles)
            else:
                _close_all(handles)
        self._zygote = None

    def _read_message(self, deadline: float) -> dict | None:
        """The zygote's next JSON line, or None when the deadline passes first."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            selector, zygote = self._selector, self._zygote
            if selector is None or zygote is None or zygote.stdout is None:
                raise SandboxError("the sandbox was closed")
            try:
                ready = [] if remaining <= 0 else selector.select(remaining)
                if not ready:
                    return None
                if any(key.data == "wake" for key, _ in ready):
                    raise SandboxError("the sandbox was closed")
                chunk = os.read(zygote.stdout.fileno(), 1 << 20)
            except (OSError, ValueError):  # closed under us by another thread
                raise SandboxError("the sandbox was closed") from None
            if not chunk:
                with self._condition:
                    self._close()
                raise SandboxError("the sandbox's zygote process died")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict = json.loads(line)
        return message

    # -- running a job -------------------------------------------------------------------
    def run(self, job: str, payload: dict, limits: SandboxLimits | None = None, *,
            inputs: Mapping[str, str | os.PathLike] | None = None, outputs: Sequence[str] = ()) -> SandboxResult:
        """Run `job` (a name in lossearch.sandbox.zygote.JOB_FUNCTIONS) on `payload` in a jailed child.

        `inputs` ({name: path}) are copied read-only into the child's working directory
        before it starts; the files named in `outputs` that the child writes there come
        back as bytes in `SandboxResult.outputs` (plain files no larger than
        `limits.file_bytes`, read without following links) before the directory goes.
        """
        limits = limits or self.limits
        self.start()
        self._wait_ready()
        workdir = tempfile.mkdtemp(prefix="lossearch-sandbox-")
        started = time.monotonic()
        request_id: int | None = None
        try:
            _copy_inputs(workdir, inputs or {})
            request_id = self._send({"job": job, "payload": payload, "limits": asdict(limits), "workdir": workdir})
            forked = self._await(request_id, time.monotonic() + 30)
            if forked is None:
                raise SandboxError("the sandbox's zygote started no child within 30 s")
            pid = forked["pid"]
            with self._condition:
                self._running[request_id] = pid
                cancelled = self._cancelled  # a cancel between our request and its pid found none to kill
            if cancelled:
                _kill_group(pid)
            done = self._await(request_id, started + limits.wall_seconds)
            timed_out = done is None
            if done is None:
                _kill_group(pid)
                done = self._await(request_id, time.monotonic() + 10)
                if done is None:  # a grandchild outside the group holds the pipe: start afresh
                    self.close()
                    done = {"status": signal.SIGKILL, "result": ""}
            seconds = time.monotonic() - started
            _kill_group(pid)  # leftovers of a child that exited but left processes behind
            result = _interpret(done, timed_out, seconds, limits, _read_log(workdir))
            return replace(result, outputs=_read_outputs(workdir, outputs, limits.file_bytes)) if outputs else result
        finally:
            if request_id is not None:
                with self._condition:
                    self._running.pop(request_id, None)
                    self._inbox.pop(request_id, None)
            shutil.rmtree(workdir, ignore_errors=True)

    def cancel(self) -> None:
        """Kill every child running now and refuse new jobs until `resume` (callable from any
        thread): the running `run` calls return a `crash`, later ones raise SandboxError."""
        with self._condition:
            self._cancelled = True
            pids = [pid for pid in self._running.values() if pid is not None]
        for pid in pids:
            _kill_group(pid)

    def resume(self) -> None:
        """Take jobs again after `cancel`."""
        with self._condition:
            self._cancelled = False

    def _send(self, request: dict) -> int:
        """Write one request to the zygote; its id."""
        with self._condition:
            if self._cancelled:
                raise SandboxError("the sandbox's jobs were cancelled")
            if self._zygote is None or self._zygote.stdin is None:
                raise SandboxError("the sandbox was closed")
            self._next_id += 1
            request_id = self._next_id
            self._running[request_id] = None
            try:
                self._zygote.stdin.write((json.dumps({"id": request_id, **request}) + "\n").encode())
                self._zygote.stdin.flush()
            except (OSError, ValueError):
                self._close()
                raise SandboxError("the sandbox's zygote process died") from None
            return request_id

    def _await(self, request_id: int, deadline: float) -> dict | None:
        """The zygote's next message about `request_id`, or None when the deadline passes first.

        Whoever waits and finds nobody reading reads the pipe for everyone, one message at a
        time, and files each under its id; the others sleep until a message comes.
        """
        with self._condition:
            while True:
                inbox = self._inbox.get(request_id)
                if inbox:
                    message = inbox.pop(0)
                    if message.get("lost"):
                        raise SandboxError("the sandbox's zygote process died")
                    return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if self._reading:
                    self._condition.wait(remaining)
                    continue
                self._reading = True
                self._condition.release()  # read without the lock: others may file, send or cancel
                try:
                    read = self._read_message(deadline)
                finally:
                    self._condition.acquire()
                    self._reading = False
                    _close_all(self._handed_over)
                    self._handed_over = []
                    self._condition.notify_all()
                if read is not None:
                    self._inbox.setdefault(int(read.get("id", -1)), []).append(read)


def _close_all(handles: list) -> None:
    """Close selectors, file objects and raw descriptors alike."""
    for handle in handles:
        if isinstance(handle, int):
            os.close(handle)
        else:
            handle.close()


def _check_name(name: str) -> str:
    if not name or name != os.path.basename(name) or name in (".", "..") or name.startswith(".child"):
        raise ValueError(f"sandbox file names must be plain file names, not {name!r}")
    return name


def _copy_inputs(workdir: str, inputs: Mapping[str, str | os.PathLike]) -> None:
    """Copy each input into the working directory, readable by the (unprivileged) child, read-only."""
    for name, source in inputs.items():
        target = os.path.join(workdir, _check_name(name))
        shutil.copyfile(source, target)
        os.chmod(target, 0o444)


def _read_outputs(workdir: str, names: Sequence[str], limit: int) -> dict[str, bytes]:
    """The named plain files the child left, each at most `limit` bytes; links and the rest are ignored.

    Every open is relative to a descriptor of the directory itself, opened without
    following links, so a child that swapped a file or the directory for a link
    cannot make us read anything else.
    """
    found: dict[str, bytes] = {}
    try:
        directory = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return found
    try:
        for name in names:
            try:
                handle = os.open(_check_name(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
            except OSError:
                continue
            with os.fdopen(handle, "rb") as file:
                info = os.fstat(file.fileno())
                if stat.S_ISREG(info.st_mode) and info.st_size <= limit:
                    found[name] = file.read(limit + 1)[:limit]
    finally:
        os.close(directory)
    return found


def _kill_group(pid: int) -> None:
    """Kill the child's process group; a child that has not yet made its group (its `setsid` is
    the jail's first act) is killed on its own."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        try:
            os.kill(pid, signal.SIGKILL)  # still the zygote's unreaped child, so the pid is still its
        except (ProcessLookupError, PermissionError):
            pass
    except PermissionError:
        pass


def _read_log(workdir: str) -> str:
    try:
        with open(os.path.join(workdir, ".child.log"), "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 2000))
            return log.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _interpret(done: dict, timed_out: bool, seconds: float, limits: SandboxLimits, log: str) -> SandboxResult:
    """Turn the zygote's report of a child's end into a SandboxResult."""
    status = int(done["status"])
    if timed_out:
        return SandboxResult(failure=Failure("timeout", f"no result within {limits.wall_seconds:g} s "
                                                        f"wall-clock"), seconds=seconds)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU,):
        return SandboxResult(failure=Failure("timeout", f"CPU-time limit of {limits.cpu_seconds} s "
                                                        f"reached"), seconds=seconds)
    text = done.get("result") or ""
    if len(text) > limits.result_bytes:
        return SandboxResult(failure=Failure("crash", "the child sent an oversize result"), seconds=seconds)
    try:
        message = json.loads(text) if text else None
    except json.JSONDecodeError:
        message = None
    if not isinstance(message, dict) or "ok" not in message:
        return SandboxResult(failure=Failure("crash", _describe_death(status, log)), seconds=seconds)
    isolation = message.get("isolation") or {}
    if message["ok"]:
        return SandboxResult(value=message.get("value"), seconds=seconds, isolation=isolation)
    error = message.get("error") or {}
    try:
        failure = Failure(str(error.get("kind")), str(error.get("message", "")))
    except ValueError:
        failure = Failure("crash", "the child reported an unknown failure kind")
    return SandboxResult(failure=failure, seconds=seconds, isolation=isolation)


def _describe_death(status: int, log: str) -> str:
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        hint = " (likely out of memory)" if name == "SIGKILL" else ""
        return f"the child process was killed by {name}{hint} before it reported a result"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    last = log.strip().splitlines()[-1] if log.strip() else ""
    return f"the child process exited with code {code} before it reported a result" + (f": {last}" if last else "")
