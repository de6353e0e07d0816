"""`appliance bench resume`: how fast a session's next turn starts, resumed three ways.

One daemon, SmolLM2 (one slot, 2048-token context) and a session with about 1500 tokens of
history. For each trial, the time to the first token of the next turn, measured at the HTTP client:

(a) the model was unloaded, so the session's KV state was parked on disk: the turn wakes the model
    and restores the state, then evaluates only the new tokens;
(b) the same, but the parked file was deleted: the turn wakes the model and prefills the whole
    history again;
(c) the session is hot in its slot: only the new tokens are evaluated;
(d) the model stays loaded, another session took the slot, so the session's state was parked in
    the worker's RAM tier: the turn restores it from memory;
(e) the same situation for a copy of the session (a fork) that has no parked state anywhere: the
    turn prefills the whole history with the model loaded.

It prints the medians, (b)/(a) (target at least 20), (e)/(d) (target at least 50), the KV
state's bytes per token and the restore throughput reported by the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from appliance.bench.harness import bench_daemon, median, resolve_model, wait_spare, wait_state
from appliance.errors import ApplianceError

MODEL = "bench"
NEXT = "Reply with one word: are you ready?"


def history_text(sentences: int) -> str:
    lines = [
        f"Entry {i}: the courier from district {i % 9} delivered {i * 3} parcels to the depot on "
        f"street {i * 17 % 31}, and the receipt was signed by clerk {i % 7}."
        for i in range(1, sentences + 1)
    ]
    return "Here is a log to keep in mind.\n" + "\n".join(lines) + "\nReply with OK."


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "resume", help="next-turn latency of a long session: parked KV state vs re-prefill vs hot"
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="model id whose file to use")
    p.add_argument("--gguf", help="a GGUF path instead of --model")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--history", type=int, default=1500, help="approximate history length in tokens")
    p.add_argument("--config", type=Path)
    p.add_argument("--state-dir")
    p.set_defaults(func=run)


def turn(c: httpx.Client, session_id: str, content: str) -> tuple[float, dict[str, Any]]:
    """Send a turn; (ms to the first token event, the done event)."""
    t0 = time.perf_counter()
    first: float | None = None
    done: dict[str, Any] | None = None
    event = ""
    with c.stream("POST", f"/api/sessions/{session_id}/messages", json={"content": content}) as r:
        if r.status_code != 200:
            raise ApplianceError(f"the turn failed: {r.status_code} {r.read().decode()[:300]}")
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
                if event == "token" and first is None:
                    first = (time.perf_counter() - t0) * 1000.0
            elif line.startswith("data: ") and event in ("done", "error"):
                data = json.loads(line[6:])
                if event == "error":
                    raise ApplianceError(f"the turn failed: {data['error']['message']}")
                done = data
    if first is None or done is None:
        raise ApplianceError("the turn ended without a token")
    return first, done


def unload(d: Any, c: httpx.Client) -> None:
    c.post(f"/api/models/{MODEL}/unload")
    wait_state(d, MODEL, "unloaded")
    wait_spare(d)
    time.sleep(0.3)  # let the machine settle after the spare worker's start-up


def run(args: argparse.Namespace) -> int:
    path = resolve_model(args.model, args.gguf, args.config, args.state_dir)
    threads = os.cpu_count() or 1
    profile = {
        "source": str(path),
        "context_size": 2048,
        "parallel": 1,
        "threads": threads,
        "idle_ttl_s": 600,
    }
    print(
        f"model file: {path} ({path.stat().st_size / 2**20:.1f} MiB), n_ctx 2048, threads {threads}, "
        f"trials {args.trials}"
    )
    hot, parked, prefill, restores, ram, ram_prefill, ram_restores = [], [], [], [], [], [], []
    with bench_daemon({MODEL: profile}, config="[agents]\npark_idle_s = 0\n") as d, d.http() as c:
        agent = {
            "name": "bench",
            "model": MODEL,
            "persona": "You answer in one word.",
            "params": {"temperature": 0, "seed": 1, "max_tokens": 4},
        }
        c.post("/api/agents", json=agent).raise_for_status()
        base = c.post("/api/sessions", json={"agent": "bench"}).json()["id"]
        filler = c.post("/api/sessions", json={"agent": "bench"}).json()["id"]
        _, first = turn(c, base, history_text(max(1, args.history // 37)))
        print(
            f"history: {first['usage']['prompt_tokens'] + first['usage']['completion_tokens']} tokens"
        )
        for _ in range(args.trials):
            # each trial continues its own copy of the history, so every trial resumes the same length
            sid = c.post(f"/api/sessions/{base}/fork").json()["id"]
            turn(c, sid, NEXT)  # makes the fork hot (a full prefill, not measured)
            ms, done = turn(c, sid, NEXT)
            hot.append(ms)

            unload(d, c)
            ms, done = turn(c, sid, NEXT)
            t = done["timings"]
            if not t.get("kv_restored"):
                raise ApplianceError(f"the parked state was not used: {t}")
            parked.append(ms)
            restores.append(t)

            unload(d, c)
            for entry in c.get(f"/api/sessions/{sid}").json()["parked"]:
                Path(entry["path"]).unlink(missing_ok=True)
            ms, done = turn(c, sid, NEXT)
            if done["timings"].get("kv_restored") or done["timings"].get("context_dropped"):
                raise ApplianceError(f"not a full re-prefill of the history: {done['timings']}")
            prefill.append(ms)

            turn(c, filler, NEXT)  # takes the one slot: sid goes to the RAM tier
            ms, done = turn(c, sid, NEXT)
            t = done["timings"]
            if t.get("kv_restore_tier") != "ram":
                raise ApplianceError(f"the session was not restored from RAM: {t}")
            ram.append(ms)
            ram_restores.append(t)
            fork = c.post(f"/api/sessions/{sid}/fork").json()["id"]
            turn(c, filler, NEXT)
            ms, done = turn(c, fork, NEXT)
            # the filler shares the persona with it, nothing of the history
            if done["timings"].get("kv_restored") or done["timings"]["cached_tokens"] > 64:
                raise ApplianceError(f"not a full prefill: {done['timings']}")
            ram_prefill.append(ms)
            for s in (sid, fork):
                c.delete(f"/api/sessions/{s}")
    ma, mb, mc = median(parked), median(prefill), median(hot)
    n_bytes = median([float(t["kv_restore_bytes"]) for t in restores])
    n_tokens = median([float(t["kv_restored_tokens"]) for t in restores])
    restore_ms = median([float(t["kv_restore_ms"]) for t in restores])
    load_ms = median([float(t.get("load_ms") or 0.0) for t in restores])

    def all_of(xs: list[float]) -> str:
        return ", ".join(f"{x:.0f}" for x in xs)

    print(
        f"(a) unloaded, KV state parked on disk:  first token median {ma:8.1f} ms  (all: {all_of(parked)})"
    )
    print(
        f"    of which model load {load_ms:.0f} ms, restore {restore_ms:.1f} ms for {n_tokens:.0f} tokens"
    )
    print(
        f"(b) unloaded, parked state deleted:     first token median {mb:8.1f} ms  (all: {all_of(prefill)})"
    )
    print(
        f"(c) hot session:                        first token median {mc:8.1f} ms  (all: {all_of(hot)})"
    )
    md, me = median(ram), median(ram_prefill)
    ram_ms = median([float(t["kv_restore_ms"]) for t in ram_restores])
    print(
        f"(d) loaded, parked in the RAM tier:     first token median {md:8.1f} ms  (all: {all_of(ram)}; restore {ram_ms:.1f} ms)"
    )
    print(
        f"(e) loaded, full re-prefill:            first token median {me:8.1f} ms  (all: {all_of(ram_prefill)})"
    )
    print(f"ratio (b)/(a): {mb / ma:.1f}  (target >= 20)")
    print(f"ratio (e)/(d): {me / md:.1f}  (target >= 50)")
    print(
        f"KV state: {n_bytes / n_tokens:.0f} bytes per token; restore {n_bytes / 2**20 / (restore_ms / 1000):.0f} MiB/s "
        f"({n_bytes / 2**20:.1f} MiB in {restore_ms:.1f} ms, read and checked from disk)"
    )
    return 0
