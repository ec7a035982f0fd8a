#!/usr/bin/env python3
"""Cross-check cleave's exported parts with onnxruntime.

For resnet50-light and the PP-OCR direction classifier (from ../shared/models), this splits the
model at three cuts with `cleave split`, then walks the parts in order on a seeded random input:
each part runs in tract (`cleave infer PART --input ... --output ...`) and in onnxruntime on the
same inputs, and their outputs must agree within a relative error of 1e-4. It also checks that
the onnxruntime chain of parts reproduces onnxruntime's whole-model output.

Usage: check_parts.py --cleave PATH/TO/cleave [--shared DIR] [--keep DIR]
Exit status: 0 on success or skip (with a printed reason), 1 on a mismatch, 2 on a setup error.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

MODELS = [
    ("models/light/light_resnet50.onnx", []),
    ("models/ch_ppocr_mobile_v2.0_cls_infer.onnx", ["--shape", "x=1,3,48,192"]),
]
TOLERANCE = 1e-4


def rel_err(a, b):
    import numpy as np

    a = a.astype(np.float64)
    b = b.astype(np.float64)
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def pick_cuts(cleave, model, shape_args, k=3):
    out = subprocess.run([cleave, "inspect", model, "--json", *shape_args], check=True, capture_output=True, text=True)
    cuts = json.loads(out.stdout)["cuts"]
    last = len(cuts) - 1
    total = max(cuts[-1]["head_flops"], 1)
    pool = [c for c in cuts if 0 < c["index"] < last and c["bottleneck"]] or [c for c in cuts if 0 < c["index"] < last]
    chosen = []
    for i in range(1, k + 1):
        target = total * i / (k + 1)
        best = min((c for c in pool if c["index"] not in chosen), key=lambda c: abs(c["head_flops"] - target))
        chosen.append(best["index"])
    return sorted(chosen)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cleave", required=True, help="path to the cleave binary")
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared"))
    ap.add_argument("--keep", help="keep the exported parts in this directory")
    args = ap.parse_args()

    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        print(f"SKIP: onnxruntime or numpy is not installed ({e}); pip install onnxruntime numpy")
        return 0
    if not os.path.isdir(os.path.join(args.shared, "models")):
        print(f"SKIP: shared data not found at {args.shared}")
        return 0

    failures = 0
    work = args.keep or tempfile.mkdtemp(prefix="cleave-ort-")
    try:
        for rel, shape_args in MODELS:
            model = os.path.join(args.shared, rel)
            name = os.path.splitext(os.path.basename(rel))[0]
            out_dir = os.path.join(work, name)
            cuts = pick_cuts(args.cleave, model, shape_args)
            cut_args = [a for c in cuts for a in ("--cut", str(c))]
            subprocess.run([args.cleave, "split", model, *shape_args, *cut_args, "-o", out_dir], check=True, capture_output=True)
            manifest = json.load(open(os.path.join(out_dir, "manifest.json")))
            rng = np.random.RandomState(0)
            env = {}
            for spec in manifest["model"]["inputs"]:
                env[spec["name"]] = rng.uniform(-1, 1, spec["shape"]).astype(np.float32)
            ort_env = dict(env)
            for part in manifest["parts"]:
                path = os.path.join(out_dir, part["file"])
                sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                feeds = {i.name: env[i.name] for i in sess.get_inputs()}
                ort_out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
                # The same part in tract, through the CLI, on the same inputs.
                in_args = []
                for i, (k, v) in enumerate(feeds.items()):
                    p = os.path.join(out_dir, f"{part['file']}.in{i}.npy")
                    np.save(p, v)
                    in_args += ["--input", f"{k}={p}"]
                tract_dir = os.path.join(out_dir, f"{part['file']}.tract")
                subprocess.run([args.cleave, "infer", path, *in_args, "-o", tract_dir], check=True, capture_output=True)
                worst = 0.0
                for o in part["outputs"]:
                    if len(part["outputs"]) == 1:
                        t = np.load(tract_dir)
                    else:
                        fname = "".join(c if c.isalnum() or c in "_-" else "_" for c in o["name"])
                        t = np.load(os.path.join(tract_dir, fname + ".npy"))
                    worst = max(worst, rel_err(t, ort_out[o["name"]]))
                    env[o["name"]] = t
                ok = worst <= TOLERANCE
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {name} {part['file']} cuts {part['from_cut']}..{part['to_cut']}: "
                      f"tract vs onnxruntime max relative error {worst:.2e}")
                # onnxruntime-only chain, for the whole-model comparison below.
                feeds = {i.name: ort_env[i.name] for i in sess.get_inputs()}
                ort_env.update(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
            whole = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
            feeds = {i.name: ort_env[i.name] for i in whole.get_inputs()}
            for o, ref in zip(whole.get_outputs(), whole.run(None, feeds)):
                err = rel_err(ort_env[o.name], ref)
                ok = err <= 1e-5
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {name} onnxruntime chain of parts vs whole model ({o.name}): {err:.2e}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("all parts agree" if failures == 0 else f"{failures} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
