"""`make bench`: every figure of issue 8 in one run, one table, and bench/results.json.

    python bench/run.py [--conversations N] [--soak-s S] [--also REF] [--quick]

1. bench/conversation.py: Talkie against the quickstart-style baseline (and the mic-only
   floor) on the same conversations, against the simulator in its own process, through
   private PulseAudio servers; then, with the soak length (BENCH_SOAK_S, default 120 s; the
   report's figure is from 1800), one long conversation for RSS and CPU growth.
2. bench/startup.py: `talkie run` (PortAudio on PulseAudio) start -> READY=1, and import times.
3. bench/history_bench.py: history size and sync time for 1k, 10k and 100k messages.

The bars (issue 8) are checked and printed; results.json holds the figures, the raw numbers
behind each ratio, the load average and the bars.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import conversation  # noqa: E402
import history_bench  # noqa: E402
import startup  # noqa: E402

RESULTS = ROOT / "bench" / "results.json"


def ready_times(runs: int) -> list[float]:
    from device.audio.pulse_harness import PulseServer
    with tempfile.TemporaryDirectory(prefix="tk-bench-ready-") as tmp:
        d = Path(tmp)
        server = PulseServer(d / "pulse")
        server.start()
        try:
            env = {k: v for k, v in server.env().items()
                   if k.startswith(("PULSE_", "XDG_RUNTIME")) or k == "HOME"}
            cfg = str(startup.box_config(d, "pulse"))
            cmd = [startup.PY, "-m", "device", "run", "--config", cfg]
            return [startup.time_to_ready(cmd, env) for _ in range(runs)]
        finally:
            server.stop()


def import_times() -> dict[str, float]:
    bare = statistics.median(startup.import_time(None) for _ in range(3))
    return {m: round((statistics.median(startup.import_time(m) for _ in range(3)) - bare) * 1000)
            for m in ("google.genai", "numpy", "sounddevice", "device.daemon", "device.cli")}


def collect(args: argparse.Namespace) -> dict[str, Any]:
    conv_args = argparse.Namespace(conversations=args.conversations, soak_s=args.soak_s,
                                   also=args.also, floor=True, pace=4.0, server_vad_ms=800,
                                   profile=None)
    print(f"conversations: {args.conversations} per client, soak {args.soak_s:.0f} s "
          f"(load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    conv = asyncio.run(conversation.run(conv_args))
    print("start -> READY=1 ...", file=sys.stderr, flush=True)
    ready = ready_times(args.ready_runs)
    imports = import_times()
    print("history ...", file=sys.stderr, flush=True)
    history = history_bench.measure(args.history_sizes)
    return {"conversation": conv, "ready_s": ready, "import_ms": imports, "history": history}


def results(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    clients = raw["conversation"]["clients"]
    t, b = clients["talkie"], clients["baseline"]
    soak = t.get("soak", {})
    out: dict[str, Any] = {
        "load_avg": {"before": raw["conversation"]["load_before"],
                     "after": raw["conversation"]["load_after"]},
        "cpus": raw["conversation"]["cpus"],
        "cpu_ratio": round(t["cpu_per_s"] / b["cpu_per_s"], 3),
        "talkie_cpu_s_per_conversation_s": t["cpu_per_s"],
        "baseline_cpu_s_per_conversation_s": b["cpu_per_s"],
        "floor_cpu_s_per_s": clients.get("floor", {}).get("cpu_per_s"),
        "talkie_idle_cpu_s_per_s": t["idle_cpu_per_s"],
        "upload_ratio": round(t["upload_wire_bytes_per_conversation"]
                              / b["upload_wire_bytes_per_conversation"], 3),
        "talkie_upload_bytes_per_conversation": t["upload_wire_bytes_per_conversation"],
        "baseline_upload_bytes_per_conversation": b["upload_wire_bytes_per_conversation"],
        "talkie_upload_audio_s_per_conversation": t["upload_audio_s_per_conversation"],
        "baseline_upload_audio_s_per_conversation": b["upload_audio_s_per_conversation"],
        "upload_pcm_ratio": round(t["upload_pcm_bytes_per_conversation"]
                                  / b["upload_pcm_bytes_per_conversation"], 3),
        "conversation_s": {"talkie": t["conversation_s"], "baseline": b["conversation_s"]},
        "conversations": t["conversations"],
    }
    for key, fig in (("reply_to_sound", "reply_to_sound"), ("barge_in", "barge_in"),
                     ("wake_to_first_frame", "wake_to_first_frame_cold"),
                     ("wake_to_first_frame_cold", "wake_to_first_frame_cold"),
                     ("wake_to_first_frame_warm", "wake_to_first_frame_warm"),
                     ("speech_end_to_signal", "speech_end_to_signal"),
                     ("speech_end_to_sound", "speech_end_to_sound"),
                     ("reply_to_sound_over_buffer", "reply_to_sound_over_buffer")):
        out[f"{key}_p50_ms"] = t[fig]["p50_ms"]
        out[f"{key}_p95_ms"] = t[fig]["p95_ms"]
        out[f"{key}_n"] = t[fig]["n"]
        out[f"baseline_{key}_p50_ms"] = b.get(fig, {}).get("p50_ms")
        out[f"baseline_{key}_p95_ms"] = b.get(fig, {}).get("p95_ms")
    out["output_latency_ms"] = t.get("output_latency_ms")
    out["rss_peak_mb"] = t["rss_peak_mb"]
    out["baseline_rss_peak_mb"] = b["rss_peak_mb"]
    out["rss_growth_pct"] = soak.get("rss_growth_pct")
    out["soak"] = {name: c.get("soak") for name, c in clients.items() if c.get("soak")}
    ready = raw["ready_s"]
    out["ready_s"] = round(statistics.median(ready), 3)
    out["ready_p95_s"] = round(conversation.pct(ready, 95), 3)
    out["ready_runs"] = len(ready)
    out["import_ms"] = raw["import_ms"]
    out["history"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in h.items()}
                      for h in raw["history"]]
    over = out["reply_to_sound_over_buffer_p95_ms"]
    out["bars"] = {
        "cpu_ratio <= 0.5": out["cpu_ratio"] <= 0.5,
        "upload_ratio <= 0.4": out["upload_ratio"] <= 0.4,
        "reply_to_sound_p95 <= 30 ms over the device buffer": over is not None and over <= 30,
        "barge_in_p95 <= 50 ms": out["barge_in_p95_ms"] <= 50,
        "rss_growth < 5 % over the soak": (out["rss_growth_pct"] is not None
                                           and out["rss_growth_pct"] < 5),
    }
    out["soak_s"] = args.soak_s
    out["clients"] = clients
    return out


def table(r: dict[str, Any]) -> str:
    c = r["clients"]
    names = [n for n in c if n != "floor"]
    rows: list[tuple[str, ...]] = [("figure", *names)]

    def row(label: str, fn: Any) -> None:
        vals = []
        for n in names:
            try:
                vals.append(fn(c[n]))
            except (KeyError, TypeError):
                vals.append("-")
        rows.append((label, *vals))

    def lat(key: str) -> Any:
        return lambda x: f"{x[key]['p50_ms']:.0f} / {x[key]['p95_ms']:.0f}  (n={x[key]['n']})"

    row("CPU s per conversation s", lambda x: f"{x['cpu_per_s']:.4f}")
    row("CPU s per s, idle between talks", lambda x: f"{x['idle_cpu_per_s']:.4f}")
    row("uploaded KB per conversation", lambda x: f"{x['upload_wire_bytes_per_conversation'] / 1000:.0f}")
    row("  of it audio, s", lambda x: f"{x['upload_audio_s_per_conversation']:.2f}")
    row("wake -> first frame, cold  p50/p95 ms", lat("wake_to_first_frame_cold"))
    row("wake -> first frame, warm  p50/p95 ms", lat("wake_to_first_frame_warm"))
    row("speech end -> signal       p50/p95 ms", lat("speech_end_to_signal"))
    row("reply byte -> sound        p50/p95 ms", lat("reply_to_sound"))
    row("  over the output latency  p50/p95 ms", lat("reply_to_sound_over_buffer"))
    row("  output latency (PortAudio) ms", lambda x: f"{x['output_latency_ms']:.1f}")
    row("speech end -> reply heard  p50/p95 ms", lat("speech_end_to_sound"))
    row("barge-in -> silence        p50/p95 ms", lat("barge_in"))
    row("peak RSS MB", lambda x: f"{x['rss_peak_mb']:.1f}")
    row("soak: RSS start -> end MB", lambda x: f"{x['soak']['rss_start_mb']} -> {x['soak']['rss_end_mb']} "
                                               f"({x['soak']['rss_growth_pct']:+.2f} %)")
    row("soak: turns (unanswered)", lambda x: f"{x['soak']['turns']} ({x['soak']['unanswered']})")
    row("soak: CPU s/s 1st / 2nd half", lambda x: f"{x['soak']['cpu_per_s_first_half']:.4f} / "
                                                  f"{x['soak']['cpu_per_s_second_half']:.4f}")
    widths = [max(len(str(rw[i])) for rw in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(rw, widths)) for rw in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    floor = c.get("floor", {}).get("cpu_per_s")
    out = ["\n".join(lines)]
    if floor is not None:
        out.append(f"mic-only floor process: {floor:.4f} CPU s per s")
    out.append(f"ratios: CPU {r['cpu_ratio']:.3f} x baseline, upload {r['upload_ratio']:.3f} x "
               f"baseline (audio seconds {r['upload_pcm_ratio']:.3f})")
    out.append(f"start -> READY=1 (PortAudio on PulseAudio): p50 {r['ready_s'] * 1000:.0f} ms, "
               f"p95 {r['ready_p95_s'] * 1000:.0f} ms over {r['ready_runs']} runs; imports (ms): "
               + ", ".join(f"{k} +{v}" for k, v in r["import_ms"].items()))
    for h in r["history"]:
        out.append(f"history {h['messages']:>6} messages: {h['box_mb']:.2f} MB on the box, "
                   f"sync {h['sync_s']:.2f} s ({h['batches']} batches)")
    out.append("bars: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in r["bars"].items()))
    out.append(f"load average before {r['load_avg']['before']}, after {r['load_avg']['after']} "
               f"on {r['cpus']} CPUs")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int,
                    default=int(os.environ.get("BENCH_CONVERSATIONS", "20")))
    ap.add_argument("--soak-s", type=float, default=float(os.environ.get("BENCH_SOAK_S", "120")))
    ap.add_argument("--also", action="append", default=[], metavar="REF",
                    help="also run Talkie as it was at git REF")
    ap.add_argument("--ready-runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true",
                    help="3 conversations, 60 s soak, 1k/10k history: a smoke run")
    args = ap.parse_args()
    args.history_sizes = [1000, 10_000, 100_000]
    if args.quick:
        args.conversations, args.soak_s, args.ready_runs = 3, 60.0, 2
        args.history_sizes = [1000, 10_000]
    raw = collect(args)
    r = results(raw, args)
    RESULTS.write_text(json.dumps(r, indent=1) + "\n")
    print(table(r))
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
