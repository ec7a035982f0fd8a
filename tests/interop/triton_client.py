#!/usr/bin/env python3
"""Triton's own gRPC client (tritonclient) against `cleave serve`.

Starts `cleave serve` on free ports with the model the repository ships (and, when given
--shared, the PP-OCR direction classifier) and checks, as a Triton user would:

  * is_server_live, is_server_ready, is_model_ready, get_model_metadata answer;
  * infer on a whole model returns what `cleave infer` computes locally, within 1e-5;
  * an input whose raw bytes do not match its shape is INVALID_ARGUMENT, and a good request
    still works afterwards;
  * the Prometheus endpoint counts the successes.

Usage: triton_client.py --cleave PATH/TO/cleave --model models/tiny_resnet.onnx [--shared DIR]
Needs: pip install 'tritonclient[grpc]' numpy
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def start_server(cleave, models, extra):
    cmd = [cleave, "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0"]
    for name, path in models:
        cmd += ["--model", f"{name}={path}"]
    proc = subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("listening "):
            fields = dict(w.split("=", 1) for w in line.split()[1:])
            # Keep draining stdout so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, fields["grpc"], fields["metrics"]
    raise SystemExit(f"cleave serve exited ({proc.wait()}) before listening")


def local_output(cleave, model, x, extra):
    """The whole model's output computed by `cleave infer` in this process tree (no server)."""
    with tempfile.TemporaryDirectory() as d:
        xin, out = os.path.join(d, "x.npy"), os.path.join(d, "out")
        np.save(xin, x)
        subprocess.run([cleave, "infer", model, "--input", xin, "-o", out] + extra, check=True, capture_output=True)
        files = sorted(os.listdir(out)) if os.path.isdir(out) else None
        if files is None:
            return {None: np.load(out)}
        return {f[: -len(".npy")]: np.load(os.path.join(out, f)) for f in files}


def rel_error(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def check_model(client, cleave, name, path, extra, failures):
    assert client.is_model_ready(name), f"{name} is not ready"
    md = client.get_model_metadata(name, as_json=True)
    inp, out = md["inputs"][0], md["outputs"][0]
    print(f"{name}: input {inp['name']} {inp['datatype']} {inp['shape']}, output {out['name']} {out['datatype']} {out['shape']}")
    assert inp["datatype"] == "FP32", md
    shape = [1 if int(d) < 0 else int(d) for d in inp["shape"]]
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)

    i = grpcclient.InferInput(inp["name"], shape, "FP32")
    i.set_data_from_numpy(x)
    res = client.infer(name, [i], outputs=[grpcclient.InferRequestedOutput(out["name"])])
    got = res.as_numpy(out["name"])
    want = local_output(cleave, path, x, extra)
    want = want.get(out["name"].replace("/", "_"), want.get(None, next(iter(want.values()))))
    err = rel_error(got, want)
    print(f"{name}: infer vs local relative error {err:.2e}")
    if not err <= 1e-5:
        failures.append(f"{name}: infer differs from the local output by {err:.2e}")
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        ref = sess.run([out["name"]], {inp["name"]: x})[0]
        err = rel_error(got, ref)
        print(f"{name}: infer vs onnxruntime relative error {err:.2e}")
        if not err <= 1e-4:
            failures.append(f"{name}: infer differs from onnxruntime by {err:.2e}")

    # Wrong length: data for a shape one column short, declared with the full shape.
    short = list(shape)
    short[-1] -= 1
    bad = grpcclient.InferInput(inp["name"], short, "FP32")
    bad.set_data_from_numpy(rng.standard_normal(short).astype(np.float32))
    bad.set_shape(shape)
    try:
        client.infer(name, [bad])
        failures.append(f"{name}: a wrong-length input was accepted")
    except InferenceServerException as e:
        print(f"{name}: wrong length -> {e.status()}: {e.message()}")
        if e.status() != "StatusCode.INVALID_ARGUMENT":
            failures.append(f"{name}: a wrong-length input gave {e.status()}, not INVALID_ARGUMENT")

    # The server still serves.
    again = client.infer(name, [i]).as_numpy(out["name"])
    if not np.array_equal(again, got):
        failures.append(f"{name}: the good request after the bad one gave a different answer")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cleave", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--shared")
    a = ap.parse_args()

    models = [("tiny", a.model, [])]
    cls = a.shared and os.path.join(a.shared, "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
    server_extra = []
    if cls and os.path.isfile(cls):
        models.append(("cls", cls, ["--shape", "x=1,3,48,192"]))
        server_extra = ["--shape", "x=1,3,48,192"]
    proc, grpc_addr, metrics_addr = start_server(a.cleave, [(n, p) for n, p, _ in models], server_extra)
    failures = []
    try:
        client = grpcclient.InferenceServerClient(url=grpc_addr)
        assert client.is_server_live(), "not live"
        assert client.is_server_ready(), "not ready"
        meta = client.get_server_metadata(as_json=True)
        print(f"server: {meta['name']} {meta['version']} extensions {meta.get('extensions', [])}")
        assert not client.is_model_ready("no_such_model")
        for name, path, extra in models:
            check_model(client, a.cleave, name, path, extra, failures)

        metrics = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10).read().decode()
        for name, _, _ in models:
            line = next((l for l in metrics.splitlines() if l.startswith(f'nv_inference_request_success{{model="{name}"')), None)
            print(f"metrics: {line}")
            if line is None or float(line.split()[-1]) < 2:
                failures.append(f"{name}: the metrics do not count the successful requests: {line}")
    finally:
        proc.terminate()
        code = proc.wait(timeout=20)
    if code != 0:
        failures.append(f"cleave serve exited {code} after SIGTERM")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("tritonclient interop: all checks passed")


if __name__ == "__main__":
    main()
