"""Run a command (a CLI run, a torchrun launch) in its own process group, and when it outlives its timeout, make
every process of the group print the Python stack of each of its threads before it is killed: a hang in a test
then fails with where each process stood, instead of a bare timeout."""

import os
import signal
import subprocess
from types import SimpleNamespace


class HangError(AssertionError):
    """The command ran past its timeout; the message holds the stacks its processes printed."""


def run(command, env=None, timeout=300, check=False, tail=20_000):
    """`subprocess.run(command, capture_output=True, text=True)` with faulthandler enabled in every Python process
    it starts (DataLoader workers and torchrun's ranks included). Past `timeout` seconds the whole process group
    gets SIGABRT (faulthandler prints the stacks of all threads), then SIGKILL; HangError carries the last `tail`
    characters of stderr. With `check`, a non-zero exit raises AssertionError with the stderr tail."""
    full_env = dict(os.environ if env is None else env, PYTHONFAULTHANDLER="1")
    process = subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGABRT)
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
