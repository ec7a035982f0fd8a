#!/usr/bin/env python3
"""The table of issue 9's acceptance runs, from the files `tools/trace-round.sh` writes.

    tools/trace-table.py OUT                 # markdown table, one row per OUT/<model>-<trace>.json
    tools/trace-table.py OUT/det-X.jsonl     # per frame: adaptive beside the oracle and device-only

Per frame, `cpu` is the device process's CPU over the frame and `threads cpu` what its compute
and race threads used on jobs that ended since the last frame (a race the server won counts in
the next frame), both ms; `probe` the bytes of the probe started after the frame; `abandoned`
the sample (Mbit/s) taken as the frame started from an upload given up undelivered; `resumed`
a sample (Mbit/s) from an upload that met an outage, measured from where the link came back; the last
column the same frame in the fixed run that sent every frame at adaptive's cut and codec for it.
After the frames, the run's gap to the oracle on the mean, split by how each frame was
answered; then one line per run in the order they ran, with the edge's median reported compute
(it drifts on a shared machine; adjacent runs drift alike).

Columns of the table: mean latency (ms) of adaptive, the oracle, the best static choice,
device-only and JPEG q90 offload; adaptive over each bar (bold where it misses: 1.10 for the
oracle, 1.00 for best static, 1.05 for min(device-only, JPEG)); the device's CPU per frame
(adaptive / device-only); device-only as profiled, as fitted before the first frame and as
measured (median frame); the measured device/edge speed ratio. Standard library only.
"""
import json
import pathlib
import statistics
import sys

MODELS = {"resnet": "resnet50-light", "det": "PP-OCRv4 det"}


def by_name(report):
    return {s["strategy"]: s for s in report}


def ratio(a, b, bar):
    r = a / b
    return f"**{r:.2f}**" if r > bar + 5e-4 else f"{r:.2f}"


def row(path):
    report = by_name(json.loads(path.read_text()))
    model, _, trace = path.stem.partition("-")
    ad, orc, best = report["adaptive"], report["oracle"], report["best-static"]
    dev, jpg = report["device-only"], report["offload-jpeg"]
    speed = ad["device_speed"]
    cpu = lambda s: "-" if s.get("device_cpu_ms") is None else f"{s['device_cpu_ms']:.0f}"
    floor = min(dev["mean_ms"], jpg["mean_ms"])
    whole = speed.get("device_whole_ms")
    ratio_txt = "-" if speed.get("measured_ratio") is None else f"{speed['measured_ratio']:.1f}×"
    cells = [
        MODELS.get(model, model),
        trace,
        *(f"{s['mean_ms']:.1f}" for s in (ad, orc, best, dev, jpg)),
        ratio(ad["mean_ms"], orc["mean_ms"], 1.10),
        ratio(ad["mean_ms"], best["mean_ms"], 1.00),
        ratio(ad["mean_ms"], floor, 1.05),
        f"{cpu(ad)} / {cpu(dev)} ms",
        f"{speed['profiled_device_whole_ms']:.0f} / {speed['planned_device_whole_ms']:.0f} / "
        + ("-" if whole is None else f"{whole:.0f}")
        + " ms",
        ratio_txt,
    ]
    return "| " + " | ".join(cells) + " |", ad["mean_ms"] / orc["mean_ms"], ad["mean_ms"] / best["mean_ms"], ad["mean_ms"] / floor


def table(out):
    header = (
        "| model | trace | adaptive | oracle | best static | device-only | JPEG q90 | ad/oracle | ad/best static "
        "| ad/min(dev, JPEG) | device CPU adaptive / device-only | device-only: profile / fitted / median frame "
        "| device/edge |"
    )
    print(header)
    print("|" + "---|" * 13)
    files = sorted(out.glob("*.json"), key=lambda p: (p.stem.split("-")[0] != "resnet", p.stem))
    held = [0, 0, 0]
    for p in files:
        try:
            line, *rs = row(p)
        except (KeyError, ValueError) as e:
            print(f"| {p.stem} | unreadable: {e} |")
            continue
        print(line)
        for i, (r, bar) in enumerate(zip(rs, (1.10, 1.00, 1.05))):
            held[i] += r <= bar + 5e-4
    n = len(files)
    print()
    print(f"Within 10 % of the oracle: {held[0]} of {n}. No worse than best static: {held[1]} of {n}. "
          f"Within 5 % of min(device-only, JPEG): {held[2]} of {n}.")


def frames(path):
    runs = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        runs.setdefault(r["strategy"], []).append(r)
    report = path.with_suffix(".json")
    oracle = {}
    if report.exists():
        for p in by_name(json.loads(report.read_text()))["oracle"].get("per_frame", []):
            oracle[p["frame"]] = p
    dev = {r["frame"]: r for r in runs.get("device-only", [])}
    # The fixed run that sent every frame the way adaptive sent this one, if there was one.
    fixed = {}
    for name, rs in runs.items():
        if name not in ("adaptive", "device-only") and rs:
            fixed.setdefault((rs[0]["cut"], rs[0].get("codec")), {x["frame"]: x for x in rs})
    print("frame | adaptive ms | cut/codec | status | est Mbit/s | predicted | delivered | race at | paused | cpu | threads cpu | probe | "
          "abandoned | resumed | oracle ms | oracle cut/codec | device-only ms | same choice, fixed run ms")
    for r in runs.get("adaptive", []):
        o = oracle.get(r["frame"], {})
        d = dev.get(r["frame"], {})
        same = fixed.get((r["cut"], r.get("codec")), {}).get(r["frame"], {})
        f = lambda v, fmt="{:.0f}": "-" if v is None else fmt.format(v)
        print(" | ".join([
            str(r["frame"]), f(r["total_ms"]), f"{r['cut']}/{r.get('codec') or '-'}", r["status"],
            f(r["estimate"]["up_bps"] / 1e6, "{:.2f}"), f(r.get("predicted_ms")), f(r.get("delivered_ms")),
            f(r.get("race_ms")), f(r.get("race_paused_ms")), f(r.get("cpu_ms")),
            f(r.get("compute_cpu_ms")), str(r.get("probe_bytes") or "-"),
            f(None if r.get("abandoned_sample_bps") is None else r["abandoned_sample_bps"] / 1e6, "{:.3f}"),
            f(None if r.get("resumed_sample_bps") is None else r["resumed_sample_bps"] / 1e6, "{:.3f}"),
            f(o.get("latency_ms")), f"{o.get('cut', '-')}/{o.get('codec') or '-'}", f(d.get("total_ms")),
            f(same.get("total_ms")),
        ]))
    if dev:
        print(f"device-only median {statistics.median(r['total_ms'] for r in dev.values()):.0f} ms")
    # Where the mean's gap to the oracle comes from: each frame's excess, by how it was answered.
    ad = runs.get("adaptive", [])
    gap = {}
    for r in ad:
        o = oracle.get(r["frame"])
        if o is not None and o.get("latency_ms") is not None:
            n, ms = gap.get(r["status"], (0, 0.0))
            gap[r["status"]] = (n + 1, ms + (r["total_ms"] - o["latency_ms"]) / len(ad))
    if gap:
        print("adaptive - oracle on the mean, by status: " + ", ".join(
            f"{status} {ms:+.1f} ms ({n} frames)" for status, (n, ms) in sorted(gap.items())))
    # The edge's speed drifts on a shared machine: what it reported, run by run, in run order.
    print()
    print("run (in order) | mean ms | median send ms after release | median edge compute ms | median device cpu ms")
    for name, rs in runs.items():
        med = lambda xs: "-" if not xs else f"{statistics.median(xs):.1f}"
        print(" | ".join([
            name, f"{statistics.mean(r['total_ms'] for r in rs):.1f}",
            med([r["send_ms"] - r["release_ms"] for r in rs if r.get("send_ms") is not None]),
            med([r["compute_ms"] for r in rs if r.get("compute_ms") is not None]),
            med([r["cpu_ms"] for r in rs if r.get("cpu_ms") is not None]),
        ]))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    p = pathlib.Path(sys.argv[1])
    if p.is_dir():
        table(p)
    elif p.suffix == ".jsonl":
        frames(p)
    else:
        sys.exit(f"{p}: neither a folder of runs nor a records file (.jsonl)")


if __name__ == "__main__":
    main()
