#!/usr/bin/env python3
"""End-to-end smoke check of a CPU engine installed by install-engines.sh.

Starts the engine on a free loopback port in its own session, waits for
GET /health = 200, then checks what the runner relies on:
  * a streaming /v1/completions with a token-id prompt, max_tokens and
    ignore_eos returns usage with the exact prompt and completion counts;
  * /metrics has the prefix-cache counters, and a repeated prefix raises them;
  * 4 concurrent streams all complete;
  * SIGTERM to the process group ends every process and frees the port.
Prints one JSON document with what it saw (timings, RSS, sample chunks).
Exits non-zero on the first failed check. Standard library only.

  source ~/.cache/runner-engines/env.sh
  python3 scripts/engine_smoke.py vllm  --out /tmp/vllm.json
  python3 scripts/engine_smoke.py llama --out /tmp/llama.json
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
MODEL_NAME = "tiny-llama"


class CheckFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def group_pids(sid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":  # session id, not a zombie
                pids.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return pids


def rss_mib(pids) -> tuple[float, dict]:
    total, per = 0, {}
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                st = dict(line.split(":", 1) for line in f if ":" in line)
            kb = int(st.get("VmRSS", "0 kB").split()[0])
            with open(f"/proc/{p}/comm") as f:
                per[f"{p}:{f.read().strip()}"] = round(kb / 1024, 1)
            total += kb
        except OSError:
            pass
    return round(total / 1024, 1), per


def req(method, port, path, body=None, timeout=60):
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    r = c.getresponse()
    out = r.status, r.read().decode("utf-8", "replace")
    c.close()
    return out


def stream(port, body, timeout=120):
    """POST a streaming completion; return (status, events, times, error_body)."""
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    t0 = time.monotonic()
    c.request("POST", "/v1/completions", body=json.dumps(body).encode(),
              headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
    r = c.getresponse()
    if r.status != 200:
        err = r.read().decode("utf-8", "replace")
        c.close()
        return r.status, [], [], err
    events, times = [], []
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip().decode()
        times.append(time.monotonic() - t0)
        events.append(payload if payload == "[DONE]" else json.loads(payload))
        if payload == "[DONE]":
            break
    c.close()
    return 200, events, times, None


def scrape(port) -> dict:
    st, text = req("GET", port, "/metrics")
    check(st == 200, f"/metrics answered {st}")
    vals = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, val = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            vals[name] = vals.get(name, 0.0) + float(val)
        except ValueError:
            pass
    return vals


def usage_of(events):
    for e in events:
        if isinstance(e, dict) and e.get("usage"):
            return e["usage"], e
    return None, None


def engine_argv(engine, port, args):
    if engine == "vllm":
        return [os.environ["RUNNER_VLLM"], "serve", os.environ["RUNNER_TINY_MODEL_HF"],
                "--served-model-name", MODEL_NAME, "--host", HOST, "--port", str(port),
                "--enforce-eager", "--block-size", "32", "--max-model-len", "4096",
                "--max-num-seqs", "8", "--enable-prefix-caching"]
    return [os.environ["RUNNER_LLAMA_SERVER"], "-m", os.environ["RUNNER_TINY_MODEL_GGUF"],
            "--alias", MODEL_NAME, "--host", HOST, "--port", str(port), "--metrics",
            "--parallel", str(args.parallel), "--ctx-size", str(args.ctx_size), "--threads", "2"]


def engine_env(engine):
    env = dict(os.environ)
    if engine == "vllm":
        env.update(VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="1", VLLM_HOST_IP=HOST,
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    return env


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine", choices=["vllm", "llama"])
    ap.add_argument("--out", help="write the JSON report here too")
    ap.add_argument("--ready-timeout", type=float, default=300)
    ap.add_argument("--parallel", type=int, default=4, help="llama-server --parallel")
    ap.add_argument("--ctx-size", type=int, default=8192, help="llama-server --ctx-size (all slots)")
    args = ap.parse_args()
    eng = args.engine
    rep: dict = {"engine": eng}
    port = free_port()
    argv = engine_argv(eng, port, args)
    rep["argv"] = argv
    log = tempfile.NamedTemporaryFile(prefix=f"smoke-{eng}-", suffix=".log", delete=False)
    rep["log"] = log.name
    t_start = time.monotonic()
    proc = subprocess.Popen(argv, env=engine_env(eng), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    sid = proc.pid
    rnd = random.Random(1234)
    vocab = 512
    ok = False
    try:
        # ---- readiness
        seen = set()
        while True:
            if proc.poll() is not None:
                raise CheckFailed(f"server exited with {proc.returncode} before ready")
            try:
                st, _ = req("GET", port, "/health", timeout=5)
                seen.add(st)
                if st == 200:
                    break
            except (ConnectionRefusedError, ConnectionResetError, http.client.HTTPException, socket.timeout):
                seen.add("refused")
            if time.monotonic() - t_start > args.ready_timeout:
                raise CheckFailed("not ready in time")
            time.sleep(0.2)
        rep["ready_s"] = round(time.monotonic() - t_start, 2)
        rep["health_states_seen"] = sorted(map(str, seen))
        st, models = req("GET", port, "/v1/models")
        rep["models"] = json.loads(models)

        # ---- exact input/output lengths, streamed
        ids = [rnd.randrange(3, vocab) for _ in range(100)]
        body = {"model": MODEL_NAME, "prompt": ids, "max_tokens": 32, "min_tokens": 32, "ignore_eos": True,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        if eng == "llama":
            body["n_predict"] = 32
        st, events, times, err = stream(port, body)
        check(st == 200, f"stream answered {st}: {err}")
        usage, uchunk = usage_of(events)
        check(usage is not None, "no usage in the stream")
        rep["usage"] = usage
        rep["usage_chunk"] = uchunk
        rep["first_chunk"] = events[0]
        content = [e for e in events if isinstance(e, dict) and e.get("choices")]
        rep["content_chunks"] = len(content)
        rep["events_total"] = len(events)
        rep["done_sent"] = events[-1] == "[DONE]"
        rep["ttft_s"] = round(times[0], 4)
        rep["text"] = "".join(c["choices"][0].get("text", "") for c in content)
        check(usage["prompt_tokens"] == 100, f"prompt_tokens {usage['prompt_tokens']} != 100")
        check(usage["completion_tokens"] == 32, f"completion_tokens {usage['completion_tokens']} != 32")

        # ---- same request without stream_options (is usage still sent?)
        b2 = dict(body)
        b2.pop("stream_options")
        st, events2, _, err = stream(port, b2)
        rep["usage_without_stream_options"] = usage_of(events2)[0]

        # ---- prefix cache counters
        m0 = scrape(port)
        names = sorted(k for k in m0 if "prefix" in k or "cache" in k or "prompt_tokens" in k)
        rep["cache_metric_names"] = names
        prefix = [rnd.randrange(3, vocab) for _ in range(96)]
        deltas = []
        prev = m0
        for i in range(2):
            tail = [rnd.randrange(3, vocab) for _ in range(8)]
            st, ev, _, err = stream(port, {"model": MODEL_NAME, "prompt": prefix + tail, "max_tokens": 4,
                                           "n_predict": 4, "ignore_eos": True, "stream": True,
                                           "stream_options": {"include_usage": True}})
            check(st == 200, f"prefix request answered {st}: {err}")
            time.sleep(0.5)
            cur = scrape(port)
            deltas.append({k: cur.get(k, 0) - prev.get(k, 0) for k in names if cur.get(k, 0) != prev.get(k, 0)})
            rep.setdefault("prefix_usage", []).append(usage_of(ev)[0])
            prev = cur
        rep["prefix_metric_deltas_first_then_repeat"] = deltas
        if eng == "vllm":
            h, q = "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"
        else:
            h, q = "llamacpp:prompt_tokens_cached_total", "llamacpp:prompt_tokens_total"
        check(h in m0 and q in m0, f"missing {h} or {q} in /metrics")
        check(deltas[1].get(h, 0) > deltas[0].get(h, 0), f"{h} did not rise on the repeated prefix: {deltas}")

        # ---- 4 concurrent streams
        results = [None] * 4

        def one(k):
            p = [rnd.randrange(3, vocab) for _ in range(200)]
            t0 = time.monotonic()
            st, ev, tm, err = stream(port, {"model": MODEL_NAME, "prompt": p, "max_tokens": 64, "n_predict": 64,
                                            "ignore_eos": True, "stream": True,
                                            "stream_options": {"include_usage": True}})
            results[k] = (st, usage_of(ev)[0], t0, t0 + (tm[-1] if tm else 0), err)

        ths = [threading.Thread(target=one, args=(k,)) for k in range(4)]
        tc = time.monotonic()
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        rep["concurrent4"] = {
            "wall_s": round(time.monotonic() - tc, 3),
            "per_request_s": [round(r[3] - r[2], 3) for r in results],
            "usage": [r[1] for r in results],
            "errors": [r[4] for r in results if r[4]],
        }
        check(all(r[0] == 200 and r[1] and r[1]["completion_tokens"] == 64 for r in results),
              f"concurrent requests failed: {results}")
        if eng == "llama":
            st, props = req("GET", port, "/props")
            pj = json.loads(props)
            rep["props"] = {"total_slots": pj.get("total_slots"),
                            "n_ctx_per_slot": pj.get("default_generation_settings", {}).get("n_ctx")}
            st, slots = req("GET", port, "/slots")
            rep["slots_status"] = st

        # ---- error answers
        errs = {}
        st, txt = req("POST", port, "/v1/completions", {"model": MODEL_NAME, "prompt": [vocab + 5], "max_tokens": 2})
        errs["token_out_of_vocab"] = [st, txt[:300]]
        st, txt = req("POST", port, "/v1/completions", {"model": MODEL_NAME, "prompt": [5, 6], "max_tokens": 100000,
                                                        "n_predict": 100000})
        errs["max_tokens_too_big"] = [st, txt[:300]]
        st, txt = req("POST", port, "/v1/completions", {"model": "no-such-model", "prompt": [5, 6], "max_tokens": 2})
        errs["unknown_model"] = [st, txt[:300]]
        rep["errors"] = errs

        pids = group_pids(sid)
        rep["processes"] = len(pids)
        rep["rss_mib_total"], rep["rss_mib"] = rss_mib(pids)
        ok = True
    except CheckFailed as e:
        rep["failed"] = str(e)
    except Exception as e:  # report it with the server log instead of a bare traceback
        rep["failed"] = f"{type(e).__name__}: {e}"
    finally:
        # ---- shutdown: SIGTERM to the group, then wait for every member
        t0 = time.monotonic()
        try:
            os.killpg(sid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        while group_pids(sid) and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        left = group_pids(sid)
        rep["sigterm_exit_s"] = round(time.monotonic() - t0, 3)
        rep["left_after_sigterm"] = left
        if left:
            os.killpg(sid, signal.SIGKILL)
            ok = False
        proc.wait()
        rep["exit_code"] = proc.returncode
        with socket.socket() as s:
            rep["port_free_after"] = s.connect_ex((HOST, port)) != 0
        log.close()
        if not ok:
            with open(log.name, errors="replace") as f:
                rep["log_tail"] = f.read()[-3000:]
    out = json.dumps(rep, indent=2)
    print(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(out + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
