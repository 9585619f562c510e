#!/usr/bin/env bash
# NVIDIA's tritonclient, unchanged, against `palisade serve` (the bundled MNIST model):
# HTTP with binary tensors, HTTP with JSON tensors, and gRPC must return the same logits, equal
# to PyTorch's own logits for the same 16 images (data/reference-parity) to 1e-4. A request
# without a key must be refused. Afterwards the audit log must verify offline. Then the same
# over TLS (`serve --tls-cert --tls-key`, a CA made here with Python's cryptography): HTTP with
# `ssl=True` and gRPC with `ssl=True, root_certificates=`, gRPC with a deadline
# (`client_timeout`, sent as grpc-timeout) and HTTP with the request `timeout` parameter. Then
# over mutual TLS with a key bound to a client certificate (`keys create --client-cert`) and one
# bound to its SPIFFE ID (`--client-san`), served with a renewed certificate too.
#
# Usage: bash tests/interop/tritonclient.sh [--prepare]   (creates .venv-interop; needs python3 and cargo)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV="$ROOT/.venv-interop"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "tritonclient[http,grpc]" numpy cryptography
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

# Triton's model configuration extension, over both transports: the tensors of the metadata.
hc = h.get_model_config("mnist", headers=hdr())
gc = g.get_model_config("mnist", headers={"authorization": f"Bearer {key}"}, as_json=True)["config"]
print("config:", hc)
for c in (hc, gc):
    assert c["name"] == "mnist" and int(c.get("max_batch_size", 0)) == 0, c
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in c["input"]] == \
        [("input", "TYPE_FP32", [-1, 1, 28, 28])], c
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in c["output"]] == \
        [(o["name"], {"BYTES": "TYPE_STRING"}.get(o["datatype"], "TYPE_" + o["datatype"]),
          o["shape"]) for o in meta["outputs"]], (c, meta)

# Triton's statistics extension, over both transports: the four infers above, 16 rows each.
gh = {"authorization": f"Bearer {key}"}
hs = h.get_inference_statistics("mnist", headers=hdr())
gs = g.get_inference_statistics("mnist", headers=gh, as_json=True)
print("statistics:", hs["model_stats"][0]["inference_stats"])
for s in (hs, gs):
    (m,) = s["model_stats"]
    assert m["name"] == "mnist" and int(m["inference_count"]) == 64, m
    assert int(m["execution_count"]) == 4 and int(m["last_inference"]) > 0, m
    st = m["inference_stats"]
    for k in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert int(st[k]["count"]) == 4 and int(st[k]["ns"]) > 0, (k, st)
    assert [int(b["batch_size"]) for b in m["batch_stats"]] == [16], m
assert hs["model_stats"][0]["inference_stats"]["success"]["ns"] == \
    int(gs["model_stats"][0]["inference_stats"]["success"]["ns"]), (hs, gs)
# Without a model name: every model the key may query.
assert [m["name"] for m in h.get_inference_statistics(headers=hdr())["model_stats"]] == ["mnist"]
assert [m.name for m in g.get_inference_statistics(headers=gh).model_stats] == ["mnist"]

# Triton's repository index, over both transports.
hi = h.get_model_repository_index(headers=hdr())
gi_ = g.get_model_repository_index(headers=gh, as_json=True)["models"]
print("repository index:", hi)
assert [(m["name"], m["state"]) for m in hi] == [("mnist", "READY")], hi
assert [(m["name"], m["version"], m["state"]) for m in gi_] == \
    [(m["name"], m["version"], m["state"]) for m in hi], (gi_, hi)

# Triton's load and unload (tritonclient's load_model and unload_model), over both transports:
# the role deploy and a TOTP code in X-Palisade-TOTP, as the admin API's actions. A code is taken
# once and codes must move forward: the first key's three codes (the last step, this one, the
# next) make a deploy key, unload and load over HTTP; the deploy key's unload and load over gRPC.
import base64, hashlib, hmac, struct, time, urllib.request
def totp(secret, step):
    k = base64.b32decode(secret + "=" * (-len(secret) % 8))
    d = hmac.new(k, struct.pack(">Q", int(time.time()) // 30 + step), hashlib.sha1).digest()
    o = d[-1] & 15
    return "%06d" % ((struct.unpack(">I", d[o:o + 4])[0] & 0x7FFFFFFF) % 1000000)
first = json.load(open(sys.argv[1]))
secret = first["totp_secret"]
def admin(step):
    return {"Authorization": f"Bearer {key}", "X-Palisade-TOTP": totp(secret, step)}
def make_key(name, roles, step):
    made = urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{sys.argv[2]}/v2/admin/keys", method="POST",
        data=json.dumps({"name": name, "roles": roles}).encode(),
        headers={**admin(step), "Content-Type": "application/json"}))
    return json.load(made)
# A deploy key alone loads and unloads; changing the log level takes an admin key.
deployer = make_key("deployer", ["deploy"], -1)
operator = make_key("operator", ["admin"], 0)
def coded(k, step):
    return {"authorization": f"Bearer {k['key']}", "x-palisade-totp": totp(k["totp_secret"], step)}
def deploying(step):
    return coded(deployer, step)
h.unload_model("mnist", headers=admin(1))
assert not h.is_model_ready("mnist", headers=hdr())
# Ready with no model, as Triton is: a load balancer keeps sending it the load.
assert h.is_server_ready() and g.is_server_ready()
try:
    http_infer(True)
    raise SystemExit("an unloaded model was served")
except InferenceServerException as e:
    assert e.status() == "404", e
print("unloaded over HTTP; its index entry:",
      [(m["name"], m["state"], m.get("reason")) for m in h.get_model_repository_index(headers=hdr())])
h.load_model("mnist", headers=deploying(-1))
assert h.is_model_ready("mnist", headers=hdr())
g.unload_model("mnist", headers=deploying(0))
assert not g.is_model_ready("mnist", headers=gh)
g.load_model("mnist", headers=deploying(1))
assert g.is_model_ready("mnist", headers=gh)
assert np.array_equal(http_infer(True), binary), "the model loaded again answers otherwise"
try:
    g.load_model("mnist", headers=gh)
    raise SystemExit("a load without a TOTP code was done")
except InferenceServerException as e:
    assert "TOTP" in e.message(), e
    print("load refused without a TOTP code:", e.status(), e.message()[:50])
print("load and unload: HTTP and gRPC, the same logits after the reload")

# Triton's logging extension: read with the admin role alone, changed with a TOTP code too.
hl = h.get_log_settings(headers=hdr())
gl = g.get_log_settings(headers=gh, as_json=True)["settings"]
print("log settings:", hl)
# `palisade serve` logs warnings and errors unless --log says otherwise.
assert hl["log_verbose_level"] == 0 and hl["log_error"] and hl["log_format"] == "json", hl
assert gl["log_error"]["bool_param"] and gl["log_format"]["string_param"] == "json", gl
changed = h.update_log_settings({"log_verbose_level": 1}, headers=coded(operator, -1))
assert changed["log_verbose_level"] == 1, changed
assert g.get_log_settings(headers=gh, as_json=True)["settings"]["log_verbose_level"]["uint32_param"] == 1
try:
    h.update_log_settings({"log_file": "/tmp/palisade.log"}, headers=hdr())
    raise SystemExit("a log setting was changed without a TOTP code")
except InferenceServerException as e:
    assert "TOTP" in e.message(), e
print("log settings: read, and the verbose level changed to 1")

# Triton's trace extension: read with the admin role alone, changed with a TOTP code too; the
# requests a setting samples are written in Triton's trace format under the state folder.
import os
ht = h.get_trace_settings(headers=hdr())
print("trace settings:", ht)
assert ht["trace_level"] == ["OFF"] and ht["trace_rate"] == "1000", ht
changed = h.update_trace_settings("mnist", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1",
                                            "trace_count": "2"}, headers=coded(operator, 0))
assert changed["trace_level"] == ["TIMESTAMPS"] and changed["trace_count"] == "2", changed
http_infer(True)
http_infer(False)
gt = g.get_trace_settings(model_name="mnist", headers=gh, as_json=True)["settings"]
assert gt["trace_count"]["value"] == ["0"], gt
# A setting sent without a value: the model's count follows the global one again.
gt = g.update_trace_settings(model_name="mnist", settings={"trace_count": None},
                             headers=coded(operator, 1), as_json=True)["settings"]
assert gt["trace_count"]["value"] == ["-1"] and gt["trace_level"]["value"] == ["TIMESTAMPS"], gt
written = os.path.join(os.path.dirname(sys.argv[1]), "traces", "trace.json.0")
for _ in range(50):
    if os.path.exists(written):
        break
    time.sleep(0.1)
traced = json.load(open(written))
assert [t["model_name"] for t in traced if "model_name" in t] == ["mnist", "mnist"], traced
print("trace settings: two requests traced, written to", written)

# Triton's streaming inference over gRPC: each sample a message of its own, answered in order
# through the same guards; a message with the wrong shape is answered with its error and the
# stream goes on; tritonclient's empty-final-response flag is answered on the response itself.
import queue
answers = queue.Queue()
def stream_input(a):
    i = tg.InferInput("input", list(a.shape), "FP32")
    i.set_data_from_numpy(a)
    return i
g.start_stream(callback=lambda result, error: answers.put((result, error)), headers=gh)
for k in range(4):
    g.async_stream_infer("mnist", [stream_input(x[k:k + 1])], request_id=f"s{k}")
g.async_stream_infer("mnist", [stream_input(x[:1].reshape(1, 784))], request_id="bad")
g.async_stream_infer("mnist", [stream_input(x[4:5])], request_id="s4",
                     enable_empty_final_response=True)
g.stop_stream()
got = [answers.get(timeout=60) for _ in range(6)]
assert answers.empty()
for k, (result, error) in zip([0, 1, 2, 3, None, 4], got):
    if k is None:
        assert result is None and error is not None, (result, error)
        print("stream: the wrong shape answered in the stream:", error.message()[:70])
        continue
    assert error is None, error
    r = result.get_response()
    assert r.id == f"s{k}", r.id
    d = float(np.abs(result.as_numpy("logits") - ref[k:k + 1]).max())
    assert d < 1e-4, (k, d)
assert got[5][0].get_response().parameters["triton_final_response"].bool_param
print("stream: 5 of 6 messages answered in order, max |logits - pytorch| within 1e-4")
refused = queue.Queue()
g.start_stream(callback=lambda result, error: refused.put((result, error)))
try:
    g.async_stream_infer("mnist", [stream_input(x[:1])])
except InferenceServerException as e:
    # The refusal (sent at once, before the message is read) came first: tritonclient then
    # refuses to send, and has handed the refusal to the callback.
    assert "no longer in valid state" in e.message(), e
result, error = refused.get(timeout=30)
g.stop_stream()
assert result is None and error is not None and "API key" in error.message(), error
print("stream refused without a key:", error.message()[:60])

for call in (lambda: h.infer("mnist", [http_input(x[:1])]),
             lambda: g.infer("mnist", [gi]),
             lambda: h.get_model_config("mnist"),
             lambda: g.get_model_config("mnist"),
             lambda: h.get_inference_statistics("mnist"),
             lambda: g.get_inference_statistics(),
             lambda: h.get_model_repository_index(),
             lambda: g.get_model_repository_index(),
             lambda: h.unload_model("mnist"),
             lambda: g.unload_model("mnist")):
    try:
        call()
        raise SystemExit("a request without a key was served")
    except InferenceServerException as e:
        print("refused without a key:", e.status(), (e.message() or "")[:60])
print("OK: tritonclient HTTP (binary, JSON, gzip), gRPC and gRPC streaming agree with PyTorch; both read the model configuration, statistics and repository index, load and unload, read and change the log settings, and trace two requests")
PY

kill -TERM $PID; wait $PID || true
# The change of the log level is in the log itself (logged before it takes effect).
grep -q 'log level changed' "$STATE/serve.log" || { echo "the log level's change is not in the log" >&2; exit 1; }
"$BIN" audit verify --state "$STATE"

# Over TLS: a CA and a certificate for 127.0.0.1 made here, a gateway of its own (the first one's
# state folder stays locked until it has exited).
"$VENV/bin/python" - "$STATE" <<'PY'
import datetime, ipaddress, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
out = sys.argv[1]
now = datetime.datetime.now(datetime.timezone.utc)
def cert(subject, key, issuer, issuer_key, ca, san=None):
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())
ca_key = ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "palisade interop CA")])
ca = cert(ca_name, ca_key, ca_name, ca_key, True)
key = ec.generate_private_key(ec.SECP256R1())
leaf = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), key, ca_name,
            ca_key, False, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
open(f"{out}/ca.pem", "wb").write(ca.public_bytes(serialization.Encoding.PEM))
open(f"{out}/cert.pem", "wb").write(leaf.public_bytes(serialization.Encoding.PEM))
open(f"{out}/key.pem", "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
# Client certificates of the same CA, for mutual TLS, each with a SPIFFE ID: alice's, to which a
# key is bound, her renewed one (a new key pair, the same SPIFFE ID), and mallory's.
for who in ["alice", "alice-renewed", "mallory"]:
    k = ec.generate_private_key(ec.SECP256R1())
    spiffe = f"spiffe://palisade.interop/{who.split('-')[0]}"
    c = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, who)]), k, ca_name, ca_key, False,
             [x509.UniformResourceIdentifier(spiffe)])
    open(f"{out}/{who}.pem", "wb").write(c.public_bytes(serialization.Encoding.PEM))
    open(f"{out}/{who}-key.pem", "wb").write(k.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
PY
"$BIN" --json serve --state "$STATE/tls" --listen "127.0.0.1:$HTTP_PORT" \
    --grpc-listen "127.0.0.1:$GRPC_PORT" --tls-cert "$STATE/cert.pem" --tls-key "$STATE/key.pem" \
    > "$STATE/tls-key.json" 2> "$STATE/tls.log" &
PID=$!
for _ in $(seq 1 200); do
    if curl -fs --cacert "$STATE/ca.pem" "https://127.0.0.1:$HTTP_PORT/v2/health/ready" > /dev/null 2>&1; then break; fi
    if ! kill -0 $PID 2>/dev/null; then cat "$STATE/tls.log"; exit 1; fi
    sleep 0.1
done
"$VENV/bin/python" - "$STATE" "$HTTP_PORT" "$GRPC_PORT" <<'PY'
import json, sys
import numpy as np
import tritonclient.http as th
import tritonclient.grpc as tg
state, http_port, grpc_port = sys.argv[1:]
ca = f"{state}/ca.pem"
key = json.load(open(f"{state}/tls-key.json"))["key"]
x = np.load("data/reference-parity/public_attacks_x16.npy").astype(np.float32)
ref = np.load("data/reference-parity/public_attacks_logits16.npy").astype(np.float32)
h = th.InferenceServerClient(url=f"127.0.0.1:{http_port}", ssl=True, ssl_options={"ca_certs": ca})
assert h.is_server_ready()
i = th.InferInput("input", list(x.shape), "FP32")
i.set_data_from_numpy(x, binary_data=True)
# The request's own timeout, in microseconds (well above what the model takes).
http = h.infer("mnist", [i], headers={"Authorization": f"Bearer {key}"},
               timeout=30_000_000).as_numpy("logits")
g = tg.InferenceServerClient(url=f"127.0.0.1:{grpc_port}", ssl=True, root_certificates=ca)
gi = tg.InferInput("input", list(x.shape), "FP32")
gi.set_data_from_numpy(x)
grpc = g.infer("mnist", [gi], headers={"authorization": f"Bearer {key}"},
               client_timeout=30).as_numpy("logits")
# A timeout no model call can meet: answered 504 by the gateway, so tritonclient's `timeout`
# reaches it.
from tritonclient.utils import InferenceServerException
try:
    h.infer("mnist", [i], headers={"Authorization": f"Bearer {key}"}, timeout=1)
    raise SystemExit("a request with a 1 µs timeout was served")
except InferenceServerException as e:
    assert "did not answer within" in (e.message() or ""), e
    print("1 µs timeout:", e.status(), (e.message() or "")[:60])
for name, y in [("https", http), ("grpc+tls", grpc)]:
    d = float(np.abs(y - ref).max())
    print(f"{name:12s} shape {y.shape} max |logits - pytorch| = {d:.2e}")
    assert y.shape == (16, 10) and d < 1e-4, name
# Plain HTTP to the TLS port is not served.
plain = th.InferenceServerClient(url=f"127.0.0.1:{http_port}", connection_timeout=5, network_timeout=5)
try:
    plain.is_server_live()
    raise SystemExit("plain HTTP was served on the TLS port")
except SystemExit:
    raise
except Exception as e:
    print("plain HTTP refused:", type(e).__name__)
print("OK: tritonclient over TLS (HTTP and gRPC) agrees with PyTorch")
PY
kill -TERM $PID; wait $PID || true
"$BIN" audit verify --state "$STATE/tls"

# Mutual TLS (`serve --tls-client-ca`), with a key bound to alice's certificate (`keys create
# --client-cert`): served to alice over HTTP and gRPC, refused to mallory (same CA, other
# certificate) with 401 / UNAUTHENTICATED, and no handshake without a certificate. And a key
# bound to alice's SPIFFE ID (`--client-san`): served with her certificate and with its renewal,
# refused to mallory.
"$BIN" --json keys create --state "$STATE/mtls" --name alice --role 'query:*' \
    --client-cert "$STATE/alice.pem" > "$STATE/alice-key.json" 2> /dev/null
"$BIN" --json keys create --state "$STATE/mtls" --name alice-spiffe --role 'query:*' \
    --client-san uri:spiffe://palisade.interop/alice > "$STATE/alice-san-key.json" 2> /dev/null
"$BIN" --json serve --state "$STATE/mtls" --listen "127.0.0.1:$HTTP_PORT" \
    --grpc-listen "127.0.0.1:$GRPC_PORT" --tls-cert "$STATE/cert.pem" --tls-key "$STATE/key.pem" \
    --tls-client-ca "$STATE/ca.pem" > /dev/null 2> "$STATE/mtls.log" &
PID=$!
for _ in $(seq 1 200); do
    if curl -fs --cacert "$STATE/ca.pem" --cert "$STATE/alice.pem" --key "$STATE/alice-key.pem" \
        "https://127.0.0.1:$HTTP_PORT/v2/health/ready" > /dev/null 2>&1; then break; fi
    if ! kill -0 $PID 2>/dev/null; then cat "$STATE/mtls.log"; exit 1; fi
    sleep 0.1
done
"$VENV/bin/python" - "$STATE" "$HTTP_PORT" "$GRPC_PORT" <<'PY'
import json, sys
import numpy as np
import tritonclient.http as th
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException
state, http_port, grpc_port = sys.argv[1:]
ca = f"{state}/ca.pem"
cert_key = json.load(open(f"{state}/alice-key.json"))["key"]
san_key = json.load(open(f"{state}/alice-san-key.json"))["key"]
x = np.load("data/reference-parity/public_attacks_x16.npy").astype(np.float32)
ref = np.load("data/reference-parity/public_attacks_logits16.npy").astype(np.float32)
def https(who):
    opts = {"ca_certs": ca, "certfile": f"{state}/{who}.pem", "keyfile": f"{state}/{who}-key.pem"}
    return th.InferenceServerClient(url=f"127.0.0.1:{http_port}", ssl=True, ssl_options=opts)
def grpcs(who):
    return tg.InferenceServerClient(url=f"127.0.0.1:{grpc_port}", ssl=True, root_certificates=ca,
                                    private_key=f"{state}/{who}-key.pem",
                                    certificate_chain=f"{state}/{who}.pem")
def infer_http(who, key=cert_key):
    i = th.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=True)
    return https(who).infer("mnist", [i], headers={"Authorization": f"Bearer {key}"}).as_numpy("logits")
def infer_grpc(who, key=cert_key):
    i = tg.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return grpcs(who).infer("mnist", [i], headers={"authorization": f"Bearer {key}"}).as_numpy("logits")
served = [("https+cert", infer_http("alice")), ("grpc+cert", infer_grpc("alice"))]
for who in ["alice", "alice-renewed"]:
    served += [(f"https+san {who}", infer_http(who, san_key)),
               (f"grpc+san {who}", infer_grpc(who, san_key))]
for name, y in served:
    d = float(np.abs(y - ref).max())
    print(f"{name:24s} shape {y.shape} max |logits - pytorch| = {d:.2e}")
    assert y.shape == (16, 10) and d < 1e-4, name
refused = [("https", "alice-renewed", infer_http, cert_key), ("grpc", "alice-renewed", infer_grpc, cert_key)]
for key in [cert_key, san_key]:
    refused += [("https", "mallory", infer_http, key), ("grpc", "mallory", infer_grpc, key)]
for name, who, call, key in refused:
    try:
        call(who, key)
        raise SystemExit(f"a key bound to alice was served to {who} over {name}")
    except InferenceServerException as e:
        status, message = str(e.status()), e.message() or ""
        assert status in ("401", "StatusCode.UNAUTHENTICATED"), (name, status, message)
        assert "bound to a client certificate" in message, (name, message)
        what = "certificate" if key == cert_key else "SPIFFE ID"
        print(f"{name}: {who}'s certificate refused for the key bound to alice's {what}: {status}")
# Without a client certificate there is no handshake.
plain = th.InferenceServerClient(url=f"127.0.0.1:{http_port}", ssl=True,
                                 ssl_options={"ca_certs": ca}, connection_timeout=5, network_timeout=5)
try:
    plain.is_server_live()
    raise SystemExit("a client without a certificate was served under --tls-client-ca")
except SystemExit:
    raise
except Exception as e:
    print("no client certificate, no handshake:", type(e).__name__)
print("OK: tritonclient over mutual TLS, with keys bound to its certificate and to its SPIFFE ID")
PY
kill -TERM $PID; wait $PID || true
"$BIN" audit verify --state "$STATE/mtls"
