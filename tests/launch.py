"""Run a command (a CLI run, a torchrun launch) and, when it outlives its timeout, make every process it started
print the Python stack of each of its threads before it is killed: a hang in a test then fails with where each
process stood, instead of a bare timeout.

The processes are found by parentage (/proc), not by process group: torchrun starts each rank in a session of its
own, so a signal to the launcher's group would miss the ranks and their DataLoader workers."""

import os
import re
import signal
import subprocess
import time
from types import SimpleNamespace


class HangError(AssertionError):
    """The command ran past its timeout; the message holds the stacks its processes printed."""


def run(command, env=None, timeout=300, check=False, tail=20_000):
    """`subprocess.run(command, capture_output=True, text=True)` with faulthandler enabled in every Python process
    it starts (DataLoader workers and torchrun's ranks included). Past `timeout` seconds every process of the tree
    gets SIGABRT, one at a time, the deepest first (faulthandler prints the stacks of all threads; apart, the
    stacks of two processes do not interleave in the shared stderr), then SIGKILL; HangError lists the processes
    and carries the last `tail` characters of their stderr. With `check`, a non-zero exit raises AssertionError
    with the stderr tail."""
    __tracebackhide__ = True
    full_env = dict(os.environ if env is None else env, PYTHONFAULTHANDLER="1")
    process = subprocess.Popen(
        command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = process_tree(process.pid)
        commands = {pid: _command_line(pid) for pid in tree}
        for pid in tree:
            _send(pid, signal.SIGABRT)
            time.sleep(0.05)
        stderr = _finish(process, tree)
        listing = "\n".join(f"  {pid}: {commands[pid]}" for pid in tree)
        raise HangError(
            f"{' '.join(map(str, command[:8]))} ... ran past {timeout} s; its processes, deepest "
            f"first:\n{listing}\ntheir stacks (stderr tail):\n{_readable(stderr)[-tail:]}"
        ) from None
    if check and process.returncode != 0:
        raise AssertionError(stderr[-tail:])
    return SimpleNamespace(returncode=process.returncode, stdout=stdout, stderr=stderr, args=command)


def _finish(process, tree):
    """The stderr of an aborted run: waits for the aborted processes to close their pipes, kills what is left
    (the tree seen at the timeout and whatever it started since), and never waits on the pipes without end."""
    try:
        return process.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        pass
    for pid in dict.fromkeys(tree + process_tree(process.pid)):
        _send(pid, signal.SIGKILL)
    try:
        return process.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired as error:  # a process outside the tree holds the pipes
        process.kill()
        return error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else (error.stderr or "")


def process_tree(root):
    """`root` and its descendants (from /proc), each process after its children: the deepest first."""
    children = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [root]
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            children.setdefault(int(fields[1]), []).append(int(entry))
    order, level = [], [root]
    while level:
        order.append(level)
        level = [child for pid in level for child in sorted(children.get(pid, ()))]
    return [pid for level in reversed(order) for pid in level]


def _command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()[:300] or "?"
    except OSError:
        return "(gone)"


def _send(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _readable(stderr):
    """stderr without progress-bar redraws and faulthandler's long list of extension modules."""
    lines = (line.rsplit("\r", 1)[-1] for line in stderr.splitlines())
    return "\n".join(line for line in lines if not re.match(r"\s*Extension modules:", line))
