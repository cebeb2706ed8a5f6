"""Run a command (a CLI run, a torchrun launch) in its own process group, and when it outlives its timeout, make
every process of the group print the Python stack of each of its threads before it is killed: a hang in a test
then fails with where each process stood, instead of a bare timeout."""

import os
import signal
import subprocess
import time
from types import SimpleNamespace


class HangError(AssertionError):
    """The command ran past its timeout; the message holds the stacks its processes printed."""


def run(command, env=None, timeout=300, check=False, tail=20_000):
    """`subprocess.run(command, capture_output=True, text=True)` with faulthandler enabled in every Python process
    it starts (DataLoader workers and torchrun's ranks included). Past `timeout` seconds the whole process group
    gets SIGABRT, one process at a time (faulthandler prints the stacks of all threads; apart, the stacks of two
processes do not interleave in the shared stderr), then SIGKILL; HangError carries the last `tail`
    characters of stderr. With `check`, a non-zero exit raises AssertionError with the stderr tail."""
    full_env = dict(os.environ if env is None else env, PYTHONFAULTHANDLER="1")
    process = subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _abort_one_by_one(process.pid)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        _signal_group(process.pid, signal.SIGKILL)  # ranks and workers the launcher left behind
        raise HangError(f"{' '.join(map(str, command[:8]))} ... ran past {timeout} s; the stacks of its processes "
                        f"(stderr tail):\n{stderr[-tail:]}") from None
    if check and process.returncode != 0:
        raise AssertionError(stderr[-tail:])
    return SimpleNamespace(returncode=process.returncode, stdout=stdout, stderr=stderr, args=command)


def _signal_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _group_members(pgid):
    """Process ids of the process group `pgid`, newest first (from /proc; only the leader where there is none)."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [pgid]
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            if len(fields) > 2 and int(fields[2]) == pgid:
                members.append(int(entry))
    return sorted(members, reverse=True) or [pgid]


def _abort_one_by_one(pgid, gap=0.05):
    """SIGABRT to each process of the group in turn, the newest (ranks, workers) before their launcher."""
    for pid in _group_members(pgid):
        try:
            os.kill(pid, signal.SIGABRT)
        except ProcessLookupError:
            pass
        time.sleep(gap)
