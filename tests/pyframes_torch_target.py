"""Target of tests/e2e/test_pyframes.py's PyTorch case (run by the PyTorch fixture's interpreter): imports
torch, prints ``ready``, waits for a line on stdin, asks ``torch.cuda.is_available()`` at the line marked
``# @is_available`` (which calls cudaGetDeviceCount), prints ``called`` and waits for SIGUSR1."""

import signal
import sys

import torch

if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    print("ready", flush=True)
    sys.stdin.readline()
    ok = torch.cuda.is_available()  # @is_available
    print(f"called available={ok}", flush=True)
    signal.sigwait([signal.SIGUSR1])
