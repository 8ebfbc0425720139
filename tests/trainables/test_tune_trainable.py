"""The trial wrapper's process-level behaviour (the trial itself runs in tests/tuner)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import sys
    from trainables.tune_trainable import stop_quietly
    if sys.argv[1] == "quiet":
        stop_quietly()

    class Finalized:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    Finalized(SystemExit(1))           # as Ray's SIGTERM handler does when it lands in a finalizer
    Finalized(KeyboardInterrupt())
    Finalized(ValueError("a real bug"))  # must still be printed
    print("still running")
""")


@pytest.mark.parametrize("mode", ["quiet", "default"])
def test_a_stopped_worker_prints_no_traceback_but_real_errors_still_show(mode):
    done = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "still running\n"
    assert "ValueError: a real bug" in done.stderr
    assert ("SystemExit" in done.stderr) == (mode == "default")
    assert ("KeyboardInterrupt" in done.stderr) == (mode == "default")
