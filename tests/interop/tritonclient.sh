#!/usr/bin/env bash
# NVIDIA's tritonclient, unchanged, against `palisade serve` (the bundled MNIST model):
# HTTP with binary tensors, HTTP with JSON tensors, and gRPC must return the same logits, equal
# to PyTorch's own logits for the same 16 images (data/reference-parity) to 1e-4. A request
# without a key must be refused. Afterwards the audit log must verify offline.
#
# Usage: bash tests/interop/tritonclient.sh [--prepare]   (creates .venv-interop; needs python3 and cargo)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV="$ROOT/.venv-interop"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "tritonclient[http,grpc]" numpy
# --prepare: only make the venv (CI does it while Rust compiles).
if [ "${1:-}" = "--prepare" ]; then exit 0; fi

# PALISADE=path/to/palisade uses that binary (CI passes the one `cargo test` just built: a
# `cargo build -p palisade-cli` here would rebuild part of the tree with other features).
if [ -n "${PALISADE:-}" ]; then BIN=$(realpath "$PALISADE"); else
    cargo build -q -p palisade-cli
    BIN="$ROOT/target/debug/palisade"
fi
STATE=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$STATE"' EXIT
read -r HTTP_PORT GRPC_PORT < <("$VENV/bin/python" -c '
import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])
[x.close() for x in s]')

"$BIN" --json serve --state "$STATE" --listen "127.0.0.1:$HTTP_PORT" \
    --grpc-listen "127.0.0.1:$GRPC_PORT" > "$STATE/first-key.json" 2> "$STATE/serve.log" &
PID=$!
for _ in $(seq 1 200); do
    if curl -fs "http://127.0.0.1:$HTTP_PORT/v2/health/ready" > /dev/null 2>&1; then break; fi
    if ! kill -0 $PID 2>/dev/null; then cat "$STATE/serve.log"; exit 1; fi
    sleep 0.1
done

"$VENV/bin/python" - "$STATE/first-key.json" "$HTTP_PORT" "$GRPC_PORT" <<'PY'
import json, sys
import numpy as np
import tritonclient.http as th
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

key = json.load(open(sys.argv[1]))["key"]
# A fresh dict per call: tritonclient's http infer() writes Inference-Header-Content-Length into
# the headers dict it is given, which would then be sent with the next (JSON) request too.
def hdr():
    return {"Authorization": f"Bearer {key}"}
x = np.load("data/reference-parity/public_attacks_x16.npy").astype(np.float32)
ref = np.load("data/reference-parity/public_attacks_logits16.npy").astype(np.float32)

h = th.InferenceServerClient(url=f"127.0.0.1:{sys.argv[2]}")
assert h.is_server_live() and h.is_server_ready()
meta = h.get_model_metadata("mnist", headers=hdr())
print("metadata:", meta["inputs"], meta["outputs"])

def http_infer(binary):
    i = th.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=binary)
    o = th.InferRequestedOutput("logits", binary_data=binary)
    return h.infer("mnist", [i], outputs=[o], headers=hdr()).as_numpy("logits")

binary = http_infer(True)
js = http_infer(False)
def http_input(a):
    i = th.InferInput("input", list(a.shape), "FP32")
    i.set_data_from_numpy(a)
    return i

gz = h.infer("mnist", [http_input(x)], headers=hdr(),
             request_compression_algorithm="gzip").as_numpy("logits")

g = tg.InferenceServerClient(url=f"127.0.0.1:{sys.argv[3]}")
assert g.is_server_live()
gi = tg.InferInput("input", list(x.shape), "FP32")
gi.set_data_from_numpy(x)
# gRPC metadata keys must be lower case.
grpc = g.infer("mnist", [gi], headers={"authorization": f"Bearer {key}"}).as_numpy("logits")

for name, y in [("http-binary", binary), ("http-json", js), ("http-gzip", gz), ("grpc", grpc)]:
    d = float(np.abs(y - ref).max())
    print(f"{name:12s} shape {y.shape} max |logits - pytorch| = {d:.2e}")
    assert y.shape == (16, 10) and d < 1e-4, name
assert np.array_equal(binary, grpc) and np.array_equal(binary, gz), "transports disagree"
assert np.allclose(binary, js, atol=1e-6), "JSON and binary disagree"

for call in (lambda: h.infer("mnist", [http_input(x[:1])]),
             lambda: g.infer("mnist", [gi])):
    try:
        call()
        raise SystemExit("a request without a key was served")
    except InferenceServerException as e:
        print("refused without a key:", e.status(), (e.message() or "")[:60])
print("OK: tritonclient HTTP (binary, JSON, gzip) and gRPC agree with PyTorch")
PY

kill -TERM $PID; wait $PID || true
"$BIN" audit verify --state "$STATE"
