"""The test launcher (tests/launch.py) turns a hang into a failure that shows where each process stood."""

import sys
import time

import pytest
from launch import HangError, run

# The parent sleeps only once the child is napping, so that both stacks are there whenever the timeout fires.
SLEEPER = """
import multiprocessing, time

def nap_in_child(ready):
    ready.set()
    time.sleep(120)

if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    context.Process(target=nap_in_child, args=(ready,)).start()
    ready.wait()
    time.sleep(120)
"""


def test_a_hung_command_fails_with_the_stacks_of_its_processes(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    with pytest.raises(HangError) as caught:
        run([sys.executable, str(script)], timeout=10)  # room for a loaded machine to start both processes
    message = str(caught.value)
    assert "ran past 10 s" in message
    assert "in nap_in_child" in message and "in <module>" in message  # the child's stack and the parent's


# torchrun starts each rank with start_new_session=True: the child leaves the launcher's process group and session
# but keeps its stdout and stderr.
DETACHED = """
import subprocess, sys, time

code = ("import time\\ndef nap_in_own_session():\\n    print('ready', flush=True)\\n    time.sleep(120)\\n"
        "nap_in_own_session()")
child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE)
child.stdout.readline()
time.sleep(120)
"""


def test_a_hung_child_in_a_session_of_its_own_is_reached_too(tmp_path):
    script = tmp_path / "detached.py"
    script.write_text(DETACHED)
    started = time.monotonic()
    with pytest.raises(HangError) as caught:
        run([sys.executable, str(script)], timeout=10)
    message = str(caught.value)
    assert "in nap_in_own_session" in message, message  # the child outside the group printed its stack
    assert time.monotonic() - started < 60  # and it was killed: nothing held the pipes open
    assert "Extension modules" not in message


def test_exit_status_and_output_come_back():
    result = run([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], timeout=60)
    assert result.returncode == 3 and result.stdout == "out\n"
    with pytest.raises(AssertionError, match="boom"):
        run([sys.executable, "-c", "raise SystemExit('boom')"], timeout=60, check=True)
