"""Writes an OIP binary-extension infer body for a batch of MNIST images of data/reference-parity
(one by default, at most the 16 there).

Prints the JSON header length (the Inference-Header-Content-Length value). No numpy needed.
Usage: python3 bench/oip_body.py OUT_FILE [BATCH]
"""
import ast
import json
import struct
import sys

with open("data/reference-parity/public_attacks_x16.npy", "rb") as f:
    raw = f.read()
assert raw[:6] == b"\x93NUMPY"
hlen = struct.unpack("<H", raw[8:10])[0]
header = ast.literal_eval(raw[10:10 + hlen].decode("latin1"))
assert header["descr"] == "<f4" and not header["fortran_order"]
count = header["shape"][0]
try:
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
except ValueError:
    batch = 0
if not 1 <= batch <= count:
    sys.exit(f"BATCH must be a whole number between 1 and {count}, not {sys.argv[2]!r}")
data = raw[10 + hlen:10 + hlen + batch * 784 * 4]
head = json.dumps({
    "inputs": [{"name": "input", "shape": [batch, 1, 28, 28], "datatype": "FP32",
                "parameters": {"binary_data_size": len(data)}}],
    "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
}).encode()
with open(sys.argv[1], "wb") as f:
    f.write(head + data)
print(len(head))
