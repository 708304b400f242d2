#!/usr/bin/env python3
"""Checks runner's GPU telemetry on a real GPU host: one command, a few minutes (well under 8).

Needs an NVIDIA GPU with its driver, PyTorch with CUDA and transformers; no vLLM and no network (the
model is a small Llama with random weights, built in memory). It

1. starts this script's own streaming completion server (`serve` below) on the GPU, through `runner`
   with an experiment written to a temporary directory, at concurrency 1 and 4, telemetry on (NVML);
2. checks every cell: GPU telemetry came from NVML, the energy from its counter is > 0 and within 10 %
   of the integrated power, utilization under load is > 0;
3. checks the GPU-release wait really waits: on SIGTERM the server leaves a process in a session of its
   own holding 2 GiB of GPU memory for a few seconds (as orphaned engine workers do); the runner's
   teardown must wait for that memory (`gpu_wait_s` in server.json), and after the run the GPU's memory
   is back to what it was before.

    python3 scripts/gpu-check.py                      # runner from target/release or target/debug
    python3 scripts/gpu-check.py --runner PATH --keep results-dir
    python3 scripts/gpu-check.py --device cpu         # plumbing only, no GPU: telemetry is off

Exit status 0 when every check passes, 1 otherwise; the figures are printed either way.

Modes used internally: `serve` (the server the experiment starts) and `hold` (the lingering process).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VOCAB = 32000
LINGER_S = 6.0
HOLD_MIB = 2048
# The GPU-release wait counts memory as released within 1 GiB of the baseline (src/server/gpu.rs).
SLACK_MIB = 1024


# ---------------------------------------------------------------------------------------------------
# serve: a few-line OpenAI-style streaming completion server around a random small Llama.


def serve(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 64),
        max_position_embeddings=4096,
    )
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = LlamaForCausalLM(config).to(device=args.device, dtype=dtype).eval()
    lock = threading.Lock()  # one sequence at a time: plain, and the GPU is busy all the same
    gauges = {"running": 0, "waiting": 0}
    gauge_lock = threading.Lock()

    def bump(name, by):
        with gauge_lock:
            gauges[name] += by

    def generate(ids, n):
        """Yields n greedy token ids, end-of-sequence ignored (the runner asks for exact lengths)."""
        with torch.inference_mode():
            x = torch.tensor([ids], device=args.device)
            out = model(input_ids=x, use_cache=True)
            for _ in range(n):
                token = out.logits[:, -1, :].argmax(dim=-1)
                yield int(token.item())
                out = model(
                    input_ids=token[:, None], past_key_values=out.past_key_values, use_cache=True
                )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes: simplest SSE

        def log_message(self, *a):
            pass

        def reply(self, code, body, kind="application/json"):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.reply(200, "ok", "text/plain")
            elif self.path == "/metrics":
                with gauge_lock:
                    text = "".join(
                        f"# TYPE vllm:num_requests_{k} gauge\nvllm:num_requests_{k} {v}\n"
                        for k, v in gauges.items()
                    )
                self.reply(200, text, "text/plain")
            else:
                self.reply(404, '{"error":{"message":"not found"}}')

        def do_POST(self):
            if self.path != "/v1/completions":
                return self.reply(404, '{"error":{"message":"not found"}}')
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            prompt = body.get("prompt", "")
            if isinstance(prompt, str):
                ids = [ord(c) % VOCAB for c in prompt] or [1]
            else:
                ids = [int(t) % VOCAB for t in prompt]
            n = int(body.get("max_tokens", 16))
            usage = {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}
            bump("waiting", 1)
            with lock:
                bump("waiting", -1)
                bump("running", 1)
                try:
                    if not body.get("stream"):
                        text = "".join(f" t{t}" for t in generate(ids, n))
                        choice = {"index": 0, "text": text, "finish_reason": "length"}
                        return self.reply(200, json.dumps({"choices": [choice], "usage": usage}))
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()

                    def event(obj):
                        self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                        self.wfile.flush()

                    for i, t in enumerate(generate(ids, n)):
                        last = "length" if i == n - 1 else None
                        event({"choices": [{"index": 0, "text": f" t{t}", "finish_reason": last}]})
                    if (body.get("stream_options") or {}).get("include_usage"):
                        event({"choices": [], "usage": usage})
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                finally:
                    bump("running", -1)

    def on_term(*_):
        # Like an engine whose worker outlives the server: a process in a session of its own keeps GPU
        # memory for a while. The runner's teardown must wait for it.
        if args.linger > 0:
            holder = subprocess.Popen(
                [sys.executable, __file__, "hold", "--seconds", str(args.linger),
                 "--mib", str(HOLD_MIB), "--device", args.device],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            holder.stdout.readline()  # "held": the memory is allocated
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"gpu-check server on 127.0.0.1:{args.port} ({args.device})", flush=True)
    server.serve_forever()


def hold(args):
    import torch

    block = torch.empty(args.mib * 1024 * 1024, dtype=torch.uint8, device=args.device)
    block.fill_(1)
    if args.device == "cuda":
        torch.cuda.synchronize()
    print("held", flush=True)
    time.sleep(args.seconds)


# ---------------------------------------------------------------------------------------------------
# check: run the experiment through runner and judge what it stored.


def memory_used_mib():
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=30,
    )
    return [int(x) for x in out.stdout.split()] if out.returncode == 0 else None


def find_runner(given):
    if given:
        return Path(given).resolve()
    built = [REPO / "target" / b / "runner" for b in ("release", "debug")]
    built = [p for p in built if p.is_file()]
    if built:
        return max(built, key=lambda p: p.stat().st_mtime)  # the one built last
    if shutil.which("cargo"):
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
        return REPO / "target" / "release" / "runner"
    sys.exit("no runner binary: build it (cargo build --release) or pass --runner PATH")


def experiment(args):
    q = json.dumps
    script = str(Path(__file__).resolve())
    return f"""
title = "gpu-check: telemetry on a real GPU"
results_dir = "results"
[engines.torch]
command = [{q(sys.executable)}, {q(script)}, "serve", "--port", "{{{{ port }}}}", "--device", {q(args.device)}, "--linger", "{args.linger if args.device == 'cuda' else 0}", "--layers", "{args.layers}", "--hidden", "{args.hidden}"]
ready_path = "/health"
ready_timeout = "5m"
metrics_path = "/metrics"
smoke_test = true
stop_grace = "20s"
gpu_release_timeout = "1m"
[models.tiny-llama]
name = "Tiny random Llama"
input_tokens = 128
output_tokens = {args.output_tokens}
token_id_range = [10, {VOCAB}]
[models.tiny-llama.precisions]
bf16 = {{ path = "random-weights" }}
[matrix]
model = ["tiny-llama"]
precision = ["bf16"]
engine = ["torch"]
concurrency = [1, 4]
[load]
requests = "max({args.requests}, 2 * concurrency)"
warmup = 1
timeout = "5m"
[cost]
gpu_hour = 2.0
currency = "USD"
"""


def check(args):
    failures = []

    def expect(ok, what):
        print(("  ok    " if ok else "  FAIL  ") + what)
        if not ok:
            failures.append(what)

    gpu = args.device == "cuda"
    if gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("PyTorch sees no CUDA GPU: run on a GPU host, or pass --device cpu for plumbing only")
        if not shutil.which("nvidia-smi"):
            sys.exit("nvidia-smi is not on PATH")
    runner = find_runner(args.runner)
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "gpu-check.toml").write_text(experiment(args))
    before = memory_used_mib() if gpu else None
    env = dict(os.environ, RUNNER_TELEMETRY="nvml" if gpu else "off")
    print(f"runner {runner}\nresults {work / 'results'}\nGPU memory before: {before} MiB", flush=True)
    started = time.time()
    run = subprocess.run(
        [str(runner), "gpu-check.toml"], cwd=work, env=env, timeout=args.timeout, stdin=subprocess.DEVNULL,
    )
    print(f"runner exited {run.returncode} after {time.time() - started:.0f} s")
    after = memory_used_mib() if gpu else None
    expect(run.returncode == 0, "the runner measured every cell (exit 0)")

    results = work / "results"
    for c in (1, 4):
        path = results / "cells" / "tiny-llama" / "bf16" / "torch" / f"c{c}" / "result.json"
        if not path.is_file():
            expect(False, f"c={c}: {path} exists")
            continue
        cell = json.loads(path.read_text())
        t = cell.get("telemetry", {})
        g = t.get("gpu")
        s = cell["summary"]
        out_tokens = (s.get("output_tokens_per_s") or 0) * s["duration_s"]
        print(f"c={c}: {s['requests']} requests in {s['duration_s']:.1f} s, {out_tokens:.0f} output tokens")
        timeline = t.get("server") or {}
        print(f"  timeline: {timeline.get('samples')} scrapes, peak running {timeline.get('peak_running')}, "
              f"peak waiting {timeline.get('peak_waiting')}")
        expect(bool(timeline.get("samples")), f"c={c}: the server timeline has samples")
        if not gpu:
            expect(g is None, f"c={c}: no GPU telemetry without a GPU (absent, not zero)")
            continue
        if g is None:
            expect(False, f"c={c}: GPU telemetry recorded ({t.get('gpu_note')})")
            continue
        energy, integrated = g.get("energy_j"), g.get("integrated_energy_j")
        diff = abs(energy - integrated) / energy * 100 if energy and integrated else None
        print(f"  source {g['source']}, energy {energy} J ({g.get('energy_method')}), integrated power "
              f"{integrated} J, difference {diff if diff is None else round(diff, 2)} %")
        print(f"  power mean {g.get('power_mean_w')} W, max {g.get('power_max_w')} W, utilization "
              f"{g.get('util_mean_pct')} %, memory {g.get('mem_used_max_mib')} / {g.get('mem_total_mib')} MiB, "
              f"SM {g.get('sm_clock_mean_mhz')} MHz, {g.get('temp_max_c')} °C, throttle {g.get('throttle_reasons')}, "
              f"{g.get('samples')} samples, longest gap {g.get('max_gap_s')} s")
        if energy and out_tokens:
            print(f"  {energy / out_tokens:.3f} J per output token")
        expect(g["source"] == "nvml" and g.get("energy_method") == "counter",
               f"c={c}: energy from NVML's counter")
        expect(bool(energy) and energy > 0, f"c={c}: energy > 0")
        expect(diff is not None and diff <= 10.0, f"c={c}: counter within 10 % of integrated power")
        expect((g.get("util_mean_pct") or 0) > 0, f"c={c}: GPU utilization > 0 under load")
        expect(not g.get("gaps"), f"c={c}: no sampling gap over 3 s")

    server_json = next(results.glob("servers/**/server.json"), None)
    server = json.loads(server_json.read_text()) if server_json else {}
    wait = server.get("gpu_wait_s")
    print(f"teardown {server.get('teardown_s')} s, GPU-release wait {wait} s; GPU memory after: {after} MiB")
    if gpu:
        expect(wait is not None and wait >= args.linger - 1.5,
               f"the GPU-release wait waited for the lingering {HOLD_MIB} MiB (≥ {args.linger - 1.5} s)")
        expect(before is not None and after is not None
               and all(a <= b + SLACK_MIB for a, b in zip(after, before)),
               "GPU memory after the run is back to what it was before")
    print(f"\n{len(failures)} check(s) failed" if failures else "\nall checks passed")
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--linger", type=float, default=0.0)
    s.add_argument("--layers", type=int, default=8)
    s.add_argument("--hidden", type=int, default=1024)
    h = sub.add_parser("hold")
    h.add_argument("--seconds", type=float, required=True)
    h.add_argument("--mib", type=int, required=True)
    h.add_argument("--device", default="cuda")
    p.add_argument("--runner", help="the runner binary (default: the newer of target/release and target/debug)")
    p.add_argument("--keep", help="write results here instead of a temporary directory")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--timeout", type=float, default=420, help="seconds the runner may take")
    p.add_argument("--layers", type=int, default=8, help="of the random Llama")
    p.add_argument("--hidden", type=int, default=1024, help="of the random Llama")
    p.add_argument("--output-tokens", type=int, default=256)
    p.add_argument("--requests", type=int, default=6, help="at least, per load point")
    p.add_argument("--linger", type=float, default=LINGER_S,
                   help="seconds the server's leftover holds GPU memory after SIGTERM")
    args = p.parse_args()
    if args.mode == "serve":
        serve(args)
    elif args.mode == "hold":
        hold(args)
    else:
        sys.exit(check(args))


if __name__ == "__main__":
    main()
