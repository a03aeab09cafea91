"""A worker target whose import takes longer than the call limit of the test that uses it
(tests/test_calculator.py::test_a_slow_worker_start_is_not_the_first_calls_time)."""

import time

time.sleep(1.5)


def echo(arg: str) -> str:
    return arg
