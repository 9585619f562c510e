#!/usr/bin/env bash
# PGD-40 speed: torchattacks 3.5.1 (PyTorch CPU) against Palisade, in one run, on the same model
# (the reference MNIST CNN: PyTorch state dict for torchattacks, its ONNX export for Palisade), the
# same first 1,000 MNIST test images, batch 128 and the same thread count (2).
#
# Prints two ratios (torchattacks seconds / Palisade seconds; > 1 means Palisade is faster):
#   1. fixed iterations (throughput): both run 40 steps on every image (`--stopping fixed`);
#   2. time to the robust-accuracy answer: torchattacks must run all 40 steps; Palisade drops each
#      image at its first success (`--stopping early`, the default). Both must give the same answer
#      within 1 point.
# for ε = 0.3 and ε = 0.1 (L∞, α 0.01, no random start).
#
# Usage: bench/attack_bench.sh  (from the repository root). Creates bench/.venv-attack on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
REF=../shared/data/reference-models
DATA=../shared/data/mnist
THREADS=${THREADS:-2}
OUT=${OUT:-target/attack-bench}
VENV=bench/.venv-attack
mkdir -p "$OUT"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, torchattacks" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch torchattacks==3.5.1 numpy
fi
# PALISADE=path/to/palisade uses an existing binary instead of building the release one.
if [ -n "${PALISADE:-}" ]; then BIN=$PALISADE; else
    cargo build --release -q -p palisade-cli
    BIN=target/release/palisade
fi

"$VENV/bin/python" - "$REF/mnist_cnn_public.state_dict.pt" "$DATA" "$THREADS" > "$OUT/torchattacks.json" <<'PY'
import gzip, json, sys, time
import numpy as np, torch, torch.nn as nn, torchattacks
sd_path, data, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3); self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(1600, 128); self.fc2 = nn.Linear(128, 10)
    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))
sd = torch.load(sd_path, map_location="cpu", weights_only=True)
net = Net()
# The state dict's keys follow the README's layer order; map them by position.
net.load_state_dict(dict(zip(net.state_dict().keys(), sd.values())))
net.eval()
with gzip.open(f"{data}/t10k-images-idx3-ubyte.gz") as f:
    x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:1000].astype(np.float32) / 255
with gzip.open(f"{data}/t10k-labels-idx1-ubyte.gz") as f:
    y = np.frombuffer(f.read(), np.uint8, offset=8)[:1000].astype(np.int64)
x, y = torch.from_numpy(x), torch.from_numpy(y)
res = {}
for eps in (0.3, 0.1):
    atk = torchattacks.PGD(net, eps=eps, alpha=0.01, steps=40, random_start=False)
    t0 = time.perf_counter(); correct = 0
    for i in range(0, 1000, 128):
        adv = atk(x[i:i+128], y[i:i+128])
        with torch.no_grad():
            correct += (net(adv).argmax(1) == y[i:i+128]).sum().item()
    res[str(eps)] = {"seconds": time.perf_counter() - t0, "robust_accuracy": correct / 1000}
print(json.dumps(res))
PY

export RAYON_NUM_THREADS=$THREADS
for eps in 0.3 0.1; do
  for stop in fixed early; do
    "$BIN" --json attack --model "$REF/mnist_cnn_public.onnx" --data "$DATA" --split test --limit 1000 \
      --attack pgd --eps "$eps" --alpha 0.01 --steps 40 --batch-size 128 --stopping "$stop" \
      --out "$OUT/pgd_${eps}_${stop}" > "$OUT/pgd_${eps}_${stop}.json" || [ $? -eq 1 ]
  done
done

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
ta = json.load(open(f"{out}/torchattacks.json"))
ok = True
print(f"{'ε':>4} {'mode':22} {'torchattacks s':>15} {'palisade s':>11} {'ratio':>6} {'acc ta':>7} {'acc pal':>8}")
for eps in ("0.3", "0.1"):
    t = ta[eps]
    for stop, label in (("fixed", "fixed iterations"), ("early", "time to answer")):
        r = json.load(open(f"{out}/pgd_{eps}_{stop}.json"))["report"]
        ratio = t["seconds"] / r["seconds"]
        print(f"{eps:>4} {label:22} {t['seconds']:15.2f} {r['seconds']:11.2f} {ratio:6.2f} {t['robust_accuracy']:7.3f} {r['robust_accuracy']:8.3f}")
        if abs(t["robust_accuracy"] - r["robust_accuracy"]) > 0.01:
            ok = False
print("ratio = torchattacks seconds / Palisade seconds (> 1: Palisade faster)")
sys.exit(0 if ok else 1)
PY
