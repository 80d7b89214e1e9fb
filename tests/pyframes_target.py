"""Target of tests/e2e/test_pyframes.py, run by every CPython under test (3.10+, any build).

``main() -> train_step() -> alloc()`` calls ``cudaMalloc`` through ctypes (the library given by path) at
the lines marked ``# @name``; in the main thread, a second thread, or a forked worker (mode ``sites``:
``two_sites()`` calls ``alloc()`` from two lines, a third of the calls from the first). Prints ``ready``
and waits for a line on stdin before calling; each process that called prints ``called pid=N`` and waits
for SIGUSR1 (or the seconds given as a fourth argument) before exiting, so the tracer reads its frames while
it is alive.
"""

import ctypes
import os
import signal
import sys
import threading
import time

LIB = None


def alloc(n):
    p = ctypes.c_void_p()
    return LIB.cudaMalloc(ctypes.byref(p), ctypes.c_size_t(n))  # @alloc


def train_step(i):
    return alloc(1024 * (i + 1))  # @train_step


def main(calls):
    for i in range(calls):
        train_step(i)  # @main


def two_sites(calls):
    for i in range(calls):
        if i % 3 == 0:
            alloc(64)  # @site_a
        else:
            alloc(128)  # @site_b


def finish():
    print(f"called pid={os.getpid()}", flush=True)
    if len(sys.argv) > 4:  # a hold in seconds instead of the signal (a target started by `ingero trace`)
        time.sleep(float(sys.argv[4]))
    else:
        signal.sigwait([signal.SIGUSR1])


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    LIB = ctypes.CDLL(sys.argv[1])
    mode, calls = sys.argv[2], int(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()
    if mode == "main":
        main(calls)  # @module
    elif mode == "sites":
        two_sites(calls)  # @module_sites
    elif mode == "thread":
        t = threading.Thread(target=main, args=(calls,))
        t.start()
        t.join()
    elif mode == "fork":
        pid = os.fork()
        if pid == 0:
            main(calls)  # @module_fork
            finish()
            os._exit(0)
        os.waitpid(pid, 0)
        print(f"child exited pid={pid}", flush=True)
        sys.exit(0)
    finish()
