"""Frames per second of the live page (``oneforcing serve``) on one CPU core, and the time to the first frame.

Two measurements in one run, on the same student and prompt, frames sent as fast as they are made:
  * in process: the server's own loop (a block generated, decoded and encoded as an image), no network;
  * end to end: the real app under uvicorn on a local port and a WebSocket client (the ``websockets`` library)
    that presses Start and counts the frame messages, as the page does.
Time to first frame: from the Start message to the first frame received (end to end) or made (in process).

    python benchmarks/live_fps.py [--checkpoint W.safetensors] [--frames 240] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time

import torch

from oneforcing.commands.serve import load_student
from oneforcing.serving.app import Session, create_app

STUDENT = "assets/study/of_framewise_1step_ffe_seed0.safetensors"
PROMPT = "a large red circle moving right slowly"


def in_process(student, frames: int) -> dict:
    start = time.perf_counter()
    session = Session(student, PROMPT, seed=0)
    made, latencies, first = 0, [], None
    while made < frames:
        images, latency_ms = session.make_block()
        if first is None:
            first = 1000 * (time.perf_counter() - start)
        made += len(images)
        latencies += [latency_ms] * len(images)
    elapsed = time.perf_counter() - start
    return dict(fps=made / elapsed, first_ms=first, p50_ms=statistics.median(latencies),
                p95_ms=statistics.quantiles(latencies, n=20)[18])


def end_to_end(student, frames: int) -> dict:
    import uvicorn
    from websockets.sync.client import connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(student, max_streams=1, max_fps=0), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with connect(f"ws://127.0.0.1:{port}/stream", max_size=None) as ws:
            json.loads(ws.recv())  # ready
            start = time.perf_counter()
            ws.send(json.dumps({"action": "start", "prompt": PROMPT, "seed": 0}))
            received, first, latencies = 0, None, []
            while received < frames:
                message = json.loads(ws.recv())
                if message["type"] != "frame":
                    continue
                if first is None:
                    first = 1000 * (time.perf_counter() - start)
                received += 1
                latencies.append(message["latency_ms"])
            elapsed = time.perf_counter() - start
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return dict(fps=received / elapsed, first_ms=first, p50_ms=statistics.median(latencies),
                p95_ms=statistics.quantiles(latencies, n=20)[18])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=STUDENT)
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    student, weights = load_student(args.checkpoint)
    Session(student, PROMPT, seed=1).make_block()  # warm-up
    rows = [("in process (generate + decode + image)", in_process(student, args.frames)),
            ("end to end (uvicorn + WebSocket client)", end_to_end(student, args.frames))]
    print(f"{args.checkpoint} ({weights} weights), {args.frames} frames, {args.threads} thread(s), "
          f"{torch.__version__}\n")
    print("| path | frames per second | first frame after Start | latency per frame p50 / p95 |\n|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['fps']:.1f} | {r['first_ms']:.0f} ms | {r['p50_ms']:.1f} / {r['p95_ms']:.1f} ms |")


if __name__ == "__main__":
    main()
