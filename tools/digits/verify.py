#!/usr/bin/env python3
"""Check assets/digits/digits_exits.onnx with onnxruntime against test.npz.

Runs the exported model one digit at a time (batch size is fixed at 1), exactly
as a consumer would: ``x.astype(float32)[i:i+1]`` raw pixels in, logits out.
It checks the file's interface (input/output names, shapes, metadata), prints
the held-out accuracy of every output, compares it with what PyTorch measured
at training time (metrics.json, written by train.py) and prints, for
information, the max-softmax threshold curve of the two early exits.

Needs numpy, onnx and onnxruntime (no torch), e.g. ``python3 -m pip install
onnxruntime onnx``. Exits non-zero if anything does not match.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

EXIT_NAMES = ["exit_1", "exit_2", "final"]
THRESHOLDS = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99]


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "assets", "digits"),
                    help="folder with digits_exits.onnx, test.npz and metrics.json")
    args = ap.parse_args()
    model_path = os.path.join(args.dir, "digits_exits.onnx")
    failures = []

    # ---- the file's interface ----
    m = onnx.load(model_path)
    meta = {p.key: p.value for p in m.metadata_props}
    opset = {o.domain: o.version for o in m.opset_import}.get("", None)
    ops = sorted({n.op_type for n in m.graph.node})
    print(f"{model_path}: {os.path.getsize(model_path)} bytes, opset {opset}, {len(m.graph.node)} nodes")
    print("ops:", ", ".join(ops))
    print("metadata:", meta)

    def dims(vi):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]

    ins = [(i.name, dims(i)) for i in m.graph.input]
    outs = [(o.name, dims(o)) for o in m.graph.output]
    print("inputs:", ins, "outputs:", outs)
    if opset != 13:
        failures.append(f"opset {opset} != 13")
    if ins != [("image", [1, 1, 28, 28])]:
        failures.append(f"inputs {ins}")
    if outs != [(n, [1, 10]) for n in EXIT_NAMES]:
        failures.append(f"outputs {outs}")
    if meta.get("cleave.exits") != "exit_1,exit_2":
        failures.append(f"cleave.exits = {meta.get('cleave.exits')!r}")
    if meta.get("cleave.labels") != "0,1,2,3,4,5,6,7,8,9":
        failures.append(f"cleave.labels = {meta.get('cleave.labels')!r}")
    if "BatchNormalization" in ops:
        failures.append("BatchNormalization left in the graph")

    # ---- held-out accuracy with onnxruntime ----
    data = np.load(os.path.join(args.dir, "test.npz"))
    x, y = data["x"], data["y"]
    assert x.dtype == np.uint8 and x.shape[1:] == (1, 28, 28) and y.dtype == np.uint8 and len(x) == len(y)
    print(f"test.npz: {len(y)} digits, per label {np.bincount(y, minlength=10).tolist()}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    logits = [np.zeros((len(x), 10), np.float32) for _ in EXIT_NAMES]
    for i in range(len(x)):
        res = sess.run(EXIT_NAMES, {"image": x.astype(np.float32)[i:i + 1]})
        for k, r in enumerate(res):
            logits[k][i] = r[0]
    correct = {n: int((l.argmax(1) == y).sum()) for n, l in zip(EXIT_NAMES, logits)}

    metrics_path = os.path.join(args.dir, "metrics.json")
    torch_correct = json.load(open(metrics_path))["heldout_correct"] if os.path.exists(metrics_path) else {}
    print(f"\n{'output':8s} {'onnxruntime':>20s} {'pytorch':>20s}")
    for n in EXIT_NAMES:
        t = torch_correct.get(n)
        ts = f"{t}/{len(y)} = {t / len(y):.4f}" if t is not None else "-"
        print(f"{n:8s} {correct[n]:>9d}/{len(y)} = {correct[n] / len(y):.4f} {ts:>20s}")
        # The exported graph folds BN and runs in another runtime, so a logit
        # may move in the last bits; allow at most one near-tie to flip.
        if t is not None and abs(t - correct[n]) > 1:
            failures.append(f"{n}: onnxruntime {correct[n]} correct vs pytorch {t}")
    if not torch_correct:
        failures.append("no metrics.json to compare with")

    # ---- early-exit threshold curves (information only) ----
    for n, l in zip(EXIT_NAMES[:2], logits[:2]):
        p = softmax(l.astype(np.float64))
        conf, pred = p.max(1), p.argmax(1)
        print(f"\n{n}: max-softmax threshold -> exit rate, accuracy of exited digits")
        for th in THRESHOLDS:
            sel = conf >= th
            acc = (pred[sel] == y[sel]).mean() if sel.any() else float("nan")
            print(f"  >= {th:.2f}: exit rate {sel.mean():.3f}, accuracy {acc:.4f}")
    # Cascade: exit_1 at threshold t1, else exit_2 at t2, else final.
    p1, p2 = softmax(logits[0].astype(np.float64)), softmax(logits[1].astype(np.float64))
    print("\ncascade (exit_1 if conf >= t, else exit_2 if conf >= t, else final):")
    for th in (0.9, 0.95, 0.99):
        e1 = p1.max(1) >= th
        e2 = ~e1 & (p2.max(1) >= th)
        fin = ~e1 & ~e2
        pred = np.where(e1, p1.argmax(1), np.where(e2, p2.argmax(1), logits[2].argmax(1)))
        print(f"  t={th:.2f}: exit_1 {e1.mean():.3f}, exit_2 {e2.mean():.3f}, final {fin.mean():.3f}, "
              f"accuracy {(pred == y).mean():.4f}")

    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("\nOK: interface as specified, onnxruntime accuracy matches PyTorch")


if __name__ == "__main__":
    main()
