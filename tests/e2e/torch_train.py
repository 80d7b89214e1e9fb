"""A small CPU training loop with a DataLoader (2 workers), run by test_torch_training.py under the
PyTorch fixture's interpreter. Ground truth for the test, appended to the file named by argv[1], one
line each: ``main pid=N``, ``cuda available=...``, ``tasks pid=N tids=a,b,...`` (the process's threads,
read from /proc/self/task: at the start of each worker and once in the main process while the workers
run) and ``worker pid=N``."""

import os
import sys

import torch
from torch.utils.data import DataLoader, Dataset

OUT = sys.argv[1]


def say(msg: str) -> None:
    with open(OUT, "a") as f:  # one write per line, O_APPEND: workers and main never interleave a line
        f.write(msg + "\n")


def tasks() -> None:
    say(f"tasks pid={os.getpid()} tids={','.join(sorted(os.listdir('/proc/self/task'), key=int))}")


class Squares(Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int):
        x = torch.tensor([float(i)])
        return x, x * x


def init(worker_id: int) -> None:
    say(f"worker pid={os.getpid()}")
    tasks()


if __name__ == "__main__":
    say(f"main pid={os.getpid()}")
    say(f"cuda available={torch.cuda.is_available()}")
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    loader = DataLoader(Squares(), batch_size=8, num_workers=2, worker_init_fn=init)
    for i, (x, y) in enumerate(loader):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if i == 0:
            tasks()
    say("done")
