"""The live page: a Starlette app that streams a causal student's frames to the browser over a WebSocket.

``GET /`` serves the page (``page.html``); ``/stream`` is the WebSocket. The page sends JSON actions and the
server answers with JSON messages:

    page → server   {"action": "start", "prompt": "...", "seed": 0}   a new stream (replaces a running one)
                    {"action": "prompt", "prompt": "..."}             switch the running stream's prompt
                    {"action": "stop"}
    server → page   {"type": "frame", "index": i, "image": "data:image/png;base64,…", "latency_ms": .., "fps": ..,
                     "first_frame_ms": ..}
                    {"type": "started" | "switched" | "stopped", ...}
                    {"type": "error", "message": "..."}   (a bad prompt: the stream keeps running)
                    {"type": "busy", "message": "..."}    (every stream slot taken; the socket then closes)

Each connection owns at most one ``LiveStream``; its blocks are made in a worker thread so that the event loop
keeps serving the other connections. A disconnect ends the stream and frees its slot and cache. The page can
only send prompts and seeds: no path, file or module is read from it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from oneforcing.sampling.live import LiveStream
from oneforcing.sampling.streaming import StreamingSampler

LOG = logging.getLogger("oneforcing.serve")
PAGE = Path(__file__).with_name("page.html")
PNG_UP_TO = 128  # frames up to this side are sent as PNG (lossless); larger ones as JPEG
MAX_PROMPT_CHARS = 2000


@dataclass
class Student:
    """What the page streams: a student's sampler and the functions around it.

    ``encode`` maps prompts to contexts (B, L, D) and raises ``ValueError`` with a message for a prompt it cannot
    encode; ``decode`` maps latents (1, n, C, H, W) to pixels (1, n, 3, H, W) in [-1, 1].
    """

    sampler: StreamingSampler
    encode: Callable[[list[str]], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    latent_shape: tuple[int, int, int]
    default_prompt: str = ""
    recache: bool = True


def frame_image(frame: torch.Tensor) -> str:
    """(3, H, W) in [-1, 1] -> a data URL of a PNG (small frames) or a JPEG."""
    pixels = ((frame.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.permute(1, 2, 0).numpy()  # (H, W, 3)
    buffer = io.BytesIO()
    kind = "png" if max(pixels.shape[:2]) <= PNG_UP_TO else "jpeg"
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format=kind.upper(), quality=90)
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def prompt_problem(prompt: object, student: Student) -> str | None:
    """Why ``prompt`` cannot start or steer a stream (None when it can)."""
    if not isinstance(prompt, str) or not prompt.strip():
        return "Type a prompt first: the prompt is empty."
    if len(prompt) > MAX_PROMPT_CHARS:
        return f"The prompt has {len(prompt)} characters; use at most {MAX_PROMPT_CHARS}."
    try:
        student.encode([prompt])
    except ValueError as error:
        return str(error)
    return None


class Session:
    """One connection's stream and its measurements."""

    def __init__(self, student: Student, prompt: str, seed: int) -> None:
        self.student, self.prompt = student, prompt
        self.stream = LiveStream(student.sampler, student.encode([prompt]), student.latent_shape, seed=seed,
                                 recache=student.recache)
        self.started = time.perf_counter()
        self.sent = 0
        self.first_frame_ms: float | None = None
        self.recent: deque[float] = deque(maxlen=48)  # send times of the last frames

    def make_block(self) -> tuple[list[str], float]:
        """The next block's frames as images, and the milliseconds per frame it took (generate + decode)."""
        start = time.perf_counter()
        block = self.stream.next_block()
        pixels = self.student.decode(block.latents)[0]  # (n, 3, H, W)
        images = [frame_image(frame) for frame in pixels]
        return images, 1000 * (time.perf_counter() - start) / len(images)

    def fps(self) -> float:
        if len(self.recent) < 2 or self.recent[-1] == self.recent[0]:
            return 0.0
        return (len(self.recent) - 1) / (self.recent[-1] - self.recent[0])


def create_app(student: Student, max_streams: int = 2, max_fps: float = 24.0) -> Starlette:
    """The page and its WebSocket. ``max_streams``: streams served at once (one per connection; the next
    connection is told the server is busy); ``max_fps``: the pace frames are sent at (0: as fast as made)."""
    if max_streams < 1:
        raise ValueError(f"max_streams={max_streams} must be >= 1.")
    if max_fps < 0:
        raise ValueError(f"max_fps={max_fps} must be >= 0 (0: as fast as the student makes frames).")
    page = PAGE.read_text().replace("{{DEFAULT_PROMPT}}", _html_attribute(student.default_prompt))
    active: set[int] = set()
    lock = asyncio.Lock()

    async def index(request) -> HTMLResponse:
        return HTMLResponse(page)

    async def stream_socket(websocket: WebSocket) -> None:
        await websocket.accept()
        async with lock:
            if len(active) >= max_streams:
                await websocket.send_json({"type": "busy", "message": f"The server is busy: it streams to "
                                           f"{max_streams} page(s) at once (--max-streams). Try again later."})
                await websocket.close(code=1013)
                return
            active.add(id(websocket))
        session: dict[str, Session | None] = {"current": None}
        producer = asyncio.create_task(_produce(websocket, session, max_fps))
        try:
            await websocket.send_json({"type": "ready", "default_prompt": student.default_prompt})
            while True:
                text = await websocket.receive_text()
                try:
                    await _handle(websocket, json.loads(text), session, student)
                except json.JSONDecodeError:
                    await websocket.send_json({"type": "error", "message": "The page sent a message that is not "
                                               "JSON; it sends {\"action\": ...} objects."})
                except WebSocketDisconnect:
                    raise
                except Exception as error:  # reported on the page and in the server's log; the connection stays
                    LOG.exception("Handling %r failed", text[:200])
                    await websocket.send_json({"type": "error", "message": f"{type(error).__name__}: {error}"})
        except WebSocketDisconnect:
            pass  # the page went away (closed, reloaded or lost): its stream ends below
        finally:
            producer.cancel()
            session["current"] = None  # the stream and its cache go with the last reference
            active.discard(id(websocket))

    app = Starlette(routes=[Route("/", index), WebSocketRoute("/stream", stream_socket)])
    app.state.active_streams = active
    return app


async def _handle(websocket: WebSocket, message: object, session: dict, student: Student) -> None:
    action = message.get("action") if isinstance(message, dict) else None
    if action == "start":
        problem = prompt_problem(message.get("prompt"), student)
        seed = message.get("seed", 0)
        if problem is None and not (isinstance(seed, int) and 0 <= seed < 2**63):
            problem = f"The seed must be a whole number from 0, got {seed!r}."
        if problem:
            await websocket.send_json({"type": "error", "message": problem})
            return
        session["current"] = await asyncio.to_thread(Session, student, message["prompt"], seed)
        await websocket.send_json({"type": "started", "prompt": message["prompt"], "seed": seed})
    elif action == "prompt":
        current = session["current"]
        problem = prompt_problem(message.get("prompt"), student)
        if current is None:
            problem = problem or "No stream is running: press Start first."
        if problem:
            await websocket.send_json({"type": "error", "message": problem})
            return
        current.stream.switch_prompt(student.encode([message["prompt"]]))
        current.prompt = message["prompt"]
        await websocket.send_json({"type": "switched", "prompt": message["prompt"],
                                   "from_frame": current.stream.frames_made})
    elif action == "stop":
        session["current"] = None
        await websocket.send_json({"type": "stopped"})
    else:
        await websocket.send_json({"type": "error", "message": f"Unknown action {action!r}; the page sends "
                                   "'start', 'prompt' or 'stop'."})


async def _produce(websocket: WebSocket, session: dict, max_fps: float) -> None:
    """Make blocks for the connection's current stream and send their frames, paced to ``max_fps``."""
    next_send = 0.0
    while True:
        current = session["current"]
        if current is None:
            await asyncio.sleep(0.02)
            continue
        try:
            images, latency_ms = await asyncio.to_thread(current.make_block)
        except Exception as error:  # reported on the page and in the server's log; the connection stays open
            LOG.exception("The stream of %r stopped", current.prompt)
            session["current"] = None
            await websocket.send_json({"type": "error", "message": f"The stream stopped: "
                                       f"{type(error).__name__}: {error}"})
            continue
        for image in images:
            if session["current"] is not current:  # stopped or restarted while this block was made
                break
            if max_fps:
                await asyncio.sleep(max(0.0, next_send - time.perf_counter()))
                next_send = max(next_send, time.perf_counter()) + 1.0 / max_fps
            now = time.perf_counter()
            current.recent.append(now)
            if current.first_frame_ms is None:
                current.first_frame_ms = 1000 * (now - current.started)
            await websocket.send_json({"type": "frame", "index": current.sent, "image": image,
                                       "latency_ms": round(latency_ms, 2), "fps": round(current.fps(), 1),
                                       "first_frame_ms": round(current.first_frame_ms, 1)})
            current.sent += 1


def _html_attribute(text: str) -> str:
    return (text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;"))
