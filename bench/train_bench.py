"""PyTorch anchor for bench/train_bench.sh: the MNIST CNN (Conv32-Conv64-FC128, as
palisade's Arch::mnist_cnn) at batch 128 on random data: training step (forward, cross-entropy,
backward, Adam) and input-gradient step (eval mode, gradient of summed cross-entropy w.r.t. the
input). Prints one JSON line with median milliseconds."""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
iters = int(sys.argv[2]) if len(sys.argv) > 2 else 30
torch.set_num_threads(threads)
torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(1600, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


net = Net()
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
x = torch.rand(128, 1, 28, 28)
y = torch.arange(128) % 10


def train_step():
    opt.zero_grad()
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def grad_step():
    xi = x.clone().requires_grad_(True)
    loss = F.cross_entropy(net(xi), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xi)
    return g


net.train()
for _ in range(3):
    train_step()
train_ms = []
for _ in range(iters):
    t = time.perf_counter()
    train_step()
    train_ms.append((time.perf_counter() - t) * 1e3)

net.eval()
for _ in range(3):
    grad_step()
grad_ms = []
for _ in range(iters):
    t = time.perf_counter()
    grad_step()
    grad_ms.append((time.perf_counter() - t) * 1e3)

print(json.dumps({"backend": f"torch {torch.__version__}", "threads": threads, "batch": 128, "iters": iters,
                  "train_step_ms": round(median(train_ms), 3), "input_grad_ms": round(median(grad_ms), 3)}))
