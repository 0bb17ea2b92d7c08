"""Test only: a machine whose wall clock is off.

With this directory on ``PYTHONPATH``, Python imports this module at startup (``site``), before
any user code: ``time.time`` and ``time.time_ns`` of the process (and of every process it
starts with the same environment: a flow's launcher and its tasks) read
``MFCKPT_TEST_CLOCK_SKEW_S`` seconds off the real clock.  The package has no hook of its own:
it reads the clock as any process does.  Used by ``tests/integration/test_named_clock.py``.
"""

import os
import time

_skew = float(os.environ.get("MFCKPT_TEST_CLOCK_SKEW_S") or 0)
if _skew:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _skew
    time.time_ns = lambda: _time_ns() + int(_skew * 1e9)
