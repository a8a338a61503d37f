"""The sandbox's child side: a zygote process that forks one jailed child per job.

Importing torch costs over a second; a zygote imports it once, then forks a
child per evaluation in milliseconds. The protocol with the parent
(lossearch.sandbox.local) is JSON lines on a private pipe:

    parent -> zygote   {"id": N, "job": ..., "payload": ..., "limits": ..., "workdir": ...}
    zygote -> parent   {"id": N, "pid": PID}                          once the child exists
    zygote -> parent   {"id": N, "status": WAITSTATUS, "result": TEXT} once it has exited

Children run side by side: the zygote forks each request's child at once and reports
each end as it comes, tagged with the request's id.

The child jails itself before any candidate code runs (`jail`): its own session
(so the parent can kill the whole group), its own network namespace where the
kernel allows it, the unprivileged `nobody` user when started as root, resource
limits, a stripped environment, a private working directory, a seccomp filter
that refuses what no audit hook sees (running a new program, leaving the process
group) and an audit hook that refuses sockets, subprocesses and file access
outside that directory. It keeps no descriptor of the zygote's: only its own
result pipe.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import selectors
import signal
import sys
import traceback

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
NOBODY = 65534
JOB_FUNCTIONS = {
    "sanity": "lossearch.sandbox.jobs:sanity_job",
    "bandit": "lossearch.sandbox.jobs:bandit_job",
    "finetune": "lossearch.sandbox.jobs:finetune_job",
    "finetune_many": "lossearch.sandbox.jobs:finetune_many_job",
    "echo": "lossearch.sandbox.jobs:echo_job",
}
# syscalls no audit event covers; each fails with EPERM in the child:
# execve, execveat (a new program runs without the audit hook: _posixsubprocess.fork_exec
# raises no event), setsid, setpgid (a process outside the group outlives the wall-clock kill),
# mknod, mknodat (os.mkfifo outside the working directory), pidfd_open, pidfd_send_signal
# (signal.pidfd_send_signal is os.kill without the event)
DENIED_SYSCALLS = {"x86_64": (59, 322, 112, 109, 133, 259, 434, 424),
                   "aarch64": (221, 281, 157, 154, 33, 434, 424)}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
PRELOAD = ("torch", "torch.nn.functional", "lossearch.sandbox.jobs")  # the jobs import the training code
# trusted set-up that a job needs before its child forks, run here in the zygote on the job's
# payload: imports the jailed child could not do (its audit hook refuses listing directories),
# such as transformers and a model's architecture for the finetune tier; each runs once per kind
JOB_PREPARE = {"finetune": "lossearch.sandbox.jobs:prepare_finetune",
               "finetune_many": "lossearch.sandbox.jobs:prepare_finetune"}


def warm_up() -> None:
    """Run what jobs run once, so lazy imports happen here and not under the child's audit hook."""
    import torch

    from lossearch.evaluation.finetune.train import WARM_UP_CONFIG, warm_up_model

    weights = torch.zeros(3, requires_grad=True)
    torch.nn.functional.logsigmoid(weights).sum().backward()  # no torch.optim step: its first imports
    # torch._dynamo (1.5 s of CPU at start-up, benchmarks/speed_tricks.py), and no job uses torch.optim
    warm_up_model(WARM_UP_CONFIG)  # the finetune tier's model, so its first job's fork waits on nothing


# -- jailing the child ---------------------------------------------------------------------

def _unshare(flags: int) -> bool:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare(flags) == 0


def isolate_network() -> str:
    """Move into an empty network namespace; say which isolation holds."""
    try:
        if os.geteuid() == 0 and _unshare(CLONE_NEWNET):
            return "network-namespace"
        uid, gid = os.geteuid(), os.getegid()
        if _unshare(CLONE_NEWUSER | CLONE_NEWNET):
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
            return "network-namespace"
    except OSError:
        pass
    return "audit-hook"


def drop_privileges(workdir: str) -> bool:
    """As root, become `nobody`: other users' files, processes and keys are out of reach."""
    if os.geteuid() != 0:
        return False
    os.chown(workdir, NOBODY, NOBODY)
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    return True


def deny_syscalls() -> bool:
    """Install a seccomp filter that fails DENIED_SYSCALLS with EPERM; False where it cannot."""
    import ctypes
    import struct

    machine = os.uname().machine
    if machine not in DENIED_SYSCALLS:
        return False
    denied = DENIED_SYSCALLS[machine]
    load, jump_eq, jump_ge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, refuse = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    program = [(load, 0, 0, 4), (jump_eq, 1, 0, AUDIT_ARCH[machine]), (ret, 0, 0, refuse),  # another ABI
               (load, 0, 0, 0), (jump_ge, len(denied) + 1, 0, 0x40000000)]  # x32 syscall numbers
    program += [(jump_eq, len(denied) - index, 0, number) for index, number in enumerate(denied)]
    program += [(ret, 0, 0, allow), (ret, 0, 0, refuse)]
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    fprog = SockFprog(len(program), ctypes.addressof(filters))
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def set_limits(limits: dict, dropped: bool) -> None:
    """Address space (on top of what torch already maps), CPU seconds, file size, processes."""
    address_space = _vm_size_bytes() + int(limits["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    cpu = int(limits["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 2))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limits["file_bytes"]),) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if dropped or os.geteuid() != 0:
        # counts every thread of the user; root ignores it, hence the drop to nobody
        nproc = int(limits["max_processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversize write raises instead of killing


def _allowed_read_roots() -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, "/usr/lib", "/usr/share", "/sys/devices/system/cpu",
             "/proc/cpuinfo", "/proc/meminfo", "/dev/null", "/dev/urandom", "/etc/localtime"}
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # lossearch/
    for path in filter(os.path.isdir, filter(None, sys.path)):
        # a checkout on sys.path would open the whole repository (runs/, a .env): only its package
        pythons = tuple(os.path.realpath(p) for p in (sys.prefix, sys.base_prefix))
        inside_python = os.path.realpath(path).startswith(pythons)
        roots.add(path if inside_python or "site-packages" in path else package_dir)
    return tuple(sorted(os.path.realpath(root) for root in roots))


def install_audit_hook(workdir: str) -> None:
    """Refuse sockets, processes, native code and file access outside `workdir`."""
    workdir = os.path.realpath(workdir)
    read_roots = _allowed_read_roots()
    blocked_prefixes = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "pty.")
    blocked_events = {"os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "signal.pthread_kill",
                      "sys.settrace", "sys.setprofile", "os.setuid", "os.chroot", "resource.setrlimit",
                      "resource.prlimit", "sys.remote_exec", "webbrowser.open", "urllib.Request"}
    path_events = {"os.remove", "os.unlink", "os.rmdir", "os.rename", "os.replace", "shutil.rmtree",
                   "os.chmod", "os.chown", "os.link", "os.symlink", "os.truncate", "os.mkdir",
                   "os.utime", "shutil.copyfile", "shutil.move", "os.listdir", "os.scandir", "os.chdir",
                   "os.setxattr", "os.removexattr"}

    def inside(path) -> bool:
        if isinstance(path, int):
            return path > 2
        real = os.path.realpath(os.fsdecode(path))
        return real == workdir or real.startswith(workdir + os.sep)

    def readable(path) -> bool:
        real = os.path.realpath(os.fsdecode(path))
        if "/environ" in real or real.startswith("/proc/") and not real.startswith(("/proc/cpuinfo", "/proc/meminfo")):
            return False
        return any(real == root or real.startswith(root + os.sep) for root in read_roots)

    def hook(event: str, args: tuple) -> None:
        if event in blocked_events or event.startswith(blocked_prefixes):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and args and args[0] is not None and not inside(args[0]):
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writes = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writes or not readable(args[0]):
                raise PermissionError(f"sandbox: opening {os.fsdecode(args[0])!r} is not allowed")
        if event in path_events and args and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes))):
            raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")

    sys.addaudithook(hook)


def jail(request: dict) -> dict:
    """Everything a child does to itself before trusted job code loads the candidate."""
    workdir = request["workdir"]
    limits = request["limits"]
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    log = os.open(os.path.join(workdir, ".child.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(devnull)
    os.close(log)
    network = isolate_network()
    os.chdir(workdir)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
                       "OMP_NUM_THREADS": str(limits["threads"])})
    dropped = drop_privileges(workdir)
    set_limits(limits, dropped)
    import torch

    torch.set_num_threads(int(limits["threads"]))
    seccomp = deny_syscalls()  # before the audit hook, which refuses ctypes
    install_audit_hook(workdir)
    return {"network": network, "user": "nobody" if dropped else "same", "seccomp": seccomp, "audit_hook": True}


def close_inherited_descriptors(keep: int) -> None:
    """Close every descriptor above stderr but `keep`: the zygote's protocol pipe to the
    parent among them, through which a child could forge another job's result."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


# -- running a job -------------------------------------------------------------------------

def classify_exception(error: BaseException) -> dict:
    """A failure dict for an exception that escaped trusted job code."""
    from lossearch.failures import CandidateError, shorten

    refusal = _sandbox_refusal(error)
    if refusal is not None:  # also when trusted code wrapped it, e.g. as an `exception` of the loss
        return {"kind": "policy", "message": shorten(str(refusal))}
    if isinstance(error, CandidateError):
        return error.failure.to_dict()
    if isinstance(error, MemoryError) or "can't allocate memory" in str(error):
        return {"kind": "memory", "message": "out of memory"}
    if isinstance(error, RecursionError):
        return {"kind": "exception", "message": "RecursionError: maximum recursion depth exceeded"}
    return {"kind": "exception", "message": shorten(f"{type(error).__name__}: {error}")}


def _sandbox_refusal(error: BaseException | None) -> PermissionError | None:
    """The audit hook's PermissionError among `error` and the exceptions it was raised from."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, PermissionError) and str(error).startswith("sandbox:"):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def log_traceback() -> None:
    """Log the exception being handled, unless the log is full: a loss that printed past the
    file-size limit must still get its result reported."""
    try:
        traceback.print_exc()
    except OSError:
        pass


def run_child(request: dict, result_fd: int) -> None:
    """In the forked child: jail, run the job, write one JSON result, exit. Never returns."""
    status = 0
    try:
        close_inherited_descriptors(result_fd)
        isolation = jail(request)
        module_name, function_name = JOB_FUNCTIONS[request["job"]].split(":")
        job = getattr(importlib.import_module(module_name), function_name)
        try:
            value = job(request["payload"])
            message = {"ok": True, "value": value, "isolation": isolation}
        except BaseException as error:  # noqa: BLE001 - the candidate may raise anything, SystemExit included
            log_traceback()
            message = {"ok": False, "error": classify_exception(error), "isolation": isolation}
        data = json.dumps(message).encode()
        for start in range(0, len(data), 1 << 16):
            os.write(result_fd, data[start:start + (1 << 16)])
    except BaseException:  # noqa: BLE001 - a broken jail must still end the child
        status = 70
        log_traceback()
    finally:
        os._exit(status)


def prepare(request: dict) -> None:
    """Run the job's JOB_PREPARE function, if any, in the zygote before the fork."""
    target = JOB_PREPARE.get(str(request.get("job")))
    if target is None:
        return
    module_name, function_name = target.split(":")
    try:
        getattr(importlib.import_module(module_name), function_name)(request["payload"])
    except Exception:  # noqa: BLE001 - the child meets the same problem and reports it as its failure
        traceback.print_exc()


class Running:
    """A forked child the zygote is collecting the result of."""

    def __init__(self, request: dict, pid: int, result_fd: int) -> None:
        self.id, self.pid, self.result_fd = request.get("id"), pid, result_fd
        self.limit = int(request["limits"]["result_bytes"]) + 1  # one byte over tells an oversize result
        self.chunks: list[bytes] = []
        self.size = 0

    def take(self, data: bytes) -> None:
        """Keep the result's first `limit` bytes; drain the rest so the child can finish writing."""
        if self.size < self.limit:
            self.chunks.append(data[: self.limit - self.size])
        self.size += len(data)

    def report(self, wait_status: int) -> dict:
        return {"id": self.id, "status": wait_status, "result": b"".join(self.chunks).decode("utf-8", "replace")}


def start_child(request: dict) -> Running:
    """Prepare, fork and jail one child for `request`; the zygote keeps the read end of its result pipe."""
    prepare(request)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        run_child(request, write_end)
    os.close(write_end)
    return Running(request, pid, read_end)


def exit_descriptor(pid: int) -> int:
    """A descriptor that turns readable when process `pid` exits (Linux 5.3+), else one already
    readable, for a loop that then waits on the process itself."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        read_end, write_end = os.pipe()
        os.close(write_end)  # an empty pipe with no writer reads as end-of-file at once
        return read_end


def serve(channel_in, channel_out) -> None:
    """The zygote's loop: a forked child per request line, children running side by side.

    Each reply carries the request's "id": {"id", "pid"} once its child exists, then
    {"id", "status", "result"} once the child has exited (its pipe closed and waitpid done).
    """
    selector = selectors.DefaultSelector()
    requests_fd = channel_in.fileno()
    selector.register(requests_fd, selectors.EVENT_READ, None)
    pending = b""

    def reply(message: dict) -> None:
        channel_out.write(json.dumps(message) + "\n")
        channel_out.flush()

    while True:
        for key, _ in selector.select():
            if key.data is None:  # a request (or the parent's end)
                chunk = os.read(requests_fd, 1 << 16)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    child = start_child(json.loads(line))
                    selector.register(child.result_fd, selectors.EVENT_READ, child)
                    reply({"id": child.id, "pid": child.pid})
                continue
            wait_status = collect(key.data, key.fd, selector)
            if wait_status is not None:
                reply(key.data.report(wait_status))


def collect(child: Running, fd: int, selector: selectors.BaseSelector) -> int | None:
    """Handle `fd` turning readable: more of the child's result, its pipe's end, or its exit.
    The child's wait status once it has exited and its result is complete; else None."""
    data = os.read(fd, 1 << 16) if fd == child.result_fd else b""
    if data:
        child.take(data)
        return None
    selector.unregister(fd)
    os.close(fd)
    was_result, child.result_fd = fd == child.result_fd, -1  # the number may come back as the exit descriptor
    exited, wait_status = os.waitpid(child.pid, os.WNOHANG)
    if not exited and was_result:  # it closed its pipe and lives on: report it once it exits
        selector.register(exit_descriptor(child.pid), selectors.EVENT_READ, child)
        return None
    if not exited:  # its exit descriptor fired; without pidfd, wait here for the exit
        _, wait_status = os.waitpid(child.pid, 0)
    return wait_status


def main() -> None:
    # the protocol gets stdout to itself; anything else printed goes to stderr
    channel_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for module in PRELOAD:
        importlib.import_module(module)
    warm_up()
    channel_out.write(json.dumps({"ready": os.getpid()}) + "\n")
    channel_out.flush()
    serve(sys.stdin, channel_out)


if __name__ == "__main__":
    main()
