"""``oneforcing serve``: the page, its WebSocket protocol, bad prompts, the stream limit and disconnects."""

import pytest
import torch
from starlette.testclient import TestClient

from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WanConfig
from oneforcing.sampling.streaming import StreamingSampler
from oneforcing.serving.app import Student, create_app
from oneforcing.toy.codec import SpaceToDepthCodec
from oneforcing.toy.text_encoder import ToyTextEncoder

RED = "a large red circle moving right slowly"
BLUE = "a small blue square moving up quickly"


def tiny_student() -> Student:
    torch.manual_seed(0)
    encoder, codec = ToyTextEncoder(), SpaceToDepthCodec(factor=2)
    config = WanConfig(num_layers=1, num_attention_heads=2, attention_head_dim=12, ffn_dim=32,
                       in_channels=12, out_channels=12, text_dim=encoder.dim)
    model = CausalWanBackbone(config, block_size=1, window_frames=3).eval()
    return Student(StreamingSampler(model, [1.0]), encode=encoder, decode=codec.decode, latent_shape=(12, 4, 4),
                   default_prompt=RED)


def frames(ws, count: int) -> list[dict]:
    """The next ``count`` frame messages (other messages in between are returned after them)."""
    got, others = [], []
    while len(got) < count:
        message = ws.receive_json()
        (got if message["type"] == "frame" else others).append(message)
    return got + others


def until(ws, kind: str) -> dict:
    while (message := ws.receive_json())["type"] != kind:
        pass
    return message


@pytest.fixture()
def client():
    with TestClient(create_app(tiny_student(), max_streams=2, max_fps=0)) as c:
        yield c


def test_the_page_has_its_controls_and_the_default_prompt(client):
    page = client.get("/")
    assert page.status_code == 200
    for element in ('id="prompt"', 'id="start"', 'id="apply"', 'id="stop"', 'id="frame"', 'id="fps"',
                    'id="latency"', 'id="ttff"', f'value="{RED}"'):
        assert element in page.text


def test_a_stream_sends_numbered_png_frames_with_its_measurements(client):
    with client.websocket_connect("/stream") as ws:
        assert ws.receive_json() == {"type": "ready", "default_prompt": RED}
        ws.send_json({"action": "start", "prompt": RED, "seed": 3})
        assert until(ws, "started") == {"type": "started", "prompt": RED, "seed": 3}
        got = frames(ws, 12)[:12]
        assert [m["index"] for m in got] == list(range(12))
        assert all(m["image"].startswith("data:image/png;base64,") for m in got)
        assert all(m["latency_ms"] > 0 and m["first_frame_ms"] > 0 for m in got) and got[-1]["fps"] > 0


def test_the_same_seed_gives_the_same_frames_and_a_switch_changes_them(client):
    def stream(switch: bool) -> list[str]:
        with client.websocket_connect("/stream") as ws:
            ws.send_json({"action": "start", "prompt": RED, "seed": 1})
            until(ws, "started")
            images = [m["image"] for m in frames(ws, 4)[:4]]
            if switch:
                ws.send_json({"action": "prompt", "prompt": BLUE})
            images += [m["image"] for m in frames(ws, 8) if m["type"] == "frame"][:8]
            return images

    plain, switched = stream(False), stream(True)
    assert plain == stream(False)
    assert switched[:4] == plain[:4] and switched[-3:] != plain[-3:]


def test_a_bad_prompt_gets_a_message_and_the_stream_keeps_running(client):
    with client.websocket_connect("/stream") as ws:
        ws.send_json({"action": "start", "prompt": "   "})
        assert "prompt is empty" in until(ws, "error")["message"]
        ws.send_json({"action": "prompt", "prompt": BLUE})
        assert "press Start first" in until(ws, "error")["message"]
        ws.send_json({"action": "start", "prompt": RED})
        until(ws, "started")
        ws.send_json({"action": "prompt", "prompt": "a pink elephant"})
        error = until(ws, "error")["message"]
        assert "outside the toy vocabulary" in error and "pink" in error and "elephant" in error
        before = frames(ws, 1)[0]["index"]
        assert frames(ws, 3)[2]["index"] >= before + 2, "the stream runs on"
        ws.send_json({"action": "dance"})
        assert "Unknown action 'dance'" in until(ws, "error")["message"]
        ws.send_text("{not json")
        assert "not JSON" in until(ws, "error")["message"]
        ws.send_json({"action": "start", "prompt": RED, "seed": "seven"})
        assert "seed must be a whole number" in until(ws, "error")["message"]
        ws.send_json({"action": "stop"})
        until(ws, "stopped")


def test_more_pages_than_the_limit_are_told_busy_and_a_closed_page_frees_its_slot(client):
    app = client.app
    with client.websocket_connect("/stream") as first, client.websocket_connect("/stream") as second:
        for ws in (first, second):
            ws.send_json({"action": "start", "prompt": RED})
            until(ws, "started")
        with client.websocket_connect("/stream") as third:
            busy = third.receive_json()
            assert busy["type"] == "busy" and "2 page(s) at once" in busy["message"]
        assert len(app.state.active_streams) == 2
        frames(first, 2), frames(second, 2)  # both still stream
    with client.websocket_connect("/stream") as again:  # the closed pages freed their slots
        assert again.receive_json()["type"] == "ready"
        again.send_json({"action": "start", "prompt": BLUE})
        until(again, "started")
        assert frames(again, 1)[0]["index"] == 0


def test_a_stream_that_fails_reports_it_and_the_page_can_start_again(client):
    student = tiny_student()
    calls = {"n": 0}
    decode = student.decode

    def failing(latents):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("decoder out of memory")
        return decode(latents)

    student.decode = failing
    with TestClient(create_app(student, max_fps=0)) as c, c.websocket_connect("/stream") as ws:
        ws.send_json({"action": "start", "prompt": RED})
        message = until(ws, "error")["message"]
        assert message == "The stream stopped: RuntimeError: decoder out of memory"
        ws.send_json({"action": "start", "prompt": RED})
        until(ws, "started")
        assert frames(ws, 2)[1]["index"] == 1


def test_a_failure_while_handling_a_message_is_reported_and_the_connection_stays():
    student = tiny_student()
    encode = student.encode
    calls = {"n": 0}

    def flaky(prompts):
        calls["n"] += 1
        if calls["n"] == 3:  # the second start: prompt check (1), the session (2) for the first; then this one
            raise RuntimeError("text encoder unavailable")
        return encode(prompts)

    student.encode = flaky
    with TestClient(create_app(student, max_fps=0)) as c, c.websocket_connect("/stream") as ws:
        ws.send_json({"action": "start", "prompt": RED})
        until(ws, "started")
        ws.send_json({"action": "start", "prompt": BLUE})
        assert until(ws, "error")["message"] == "RuntimeError: text encoder unavailable"
        ws.send_json({"action": "start", "prompt": BLUE})
        until(ws, "started")
        assert frames(ws, 1)[0]["index"] == 0


def test_stop_sends_no_frame_of_the_block_being_made():
    """A block takes 0.1 s here, so Stop arrives while one is being made: none of its frames reaches the page."""
    import time

    student = tiny_student()
    decode = student.decode

    def slow(latents):
        time.sleep(0.1)
        return decode(latents)

    student.decode = slow
    with TestClient(create_app(student, max_fps=0)) as c, c.websocket_connect("/stream") as ws:
        for _ in range(3):
            ws.send_json({"action": "start", "prompt": RED})
            until(ws, "started")
            frames(ws, 1)
            ws.send_json({"action": "stop"})
            until(ws, "stopped")
            ws.send_json({"action": "start", "prompt": BLUE})
            between = []
            while (message := ws.receive_json())["type"] != "started":
                between.append(message["type"])
            assert between == []
            assert frames(ws, 1)[0]["index"] == 0
            ws.send_json({"action": "stop"})
            until(ws, "stopped")


def test_the_server_refuses_bad_settings():
    with pytest.raises(ValueError, match="max_streams=0"):
        create_app(tiny_student(), max_streams=0)
    with pytest.raises(ValueError, match="max_fps=-1"):
        create_app(tiny_student(), max_fps=-1)


def test_the_command_refuses_a_teacher_and_a_bad_prompt(tmp_path):
    from oneforcing.commands.serve import build_parser, load_student

    with pytest.raises(ValueError, match="bidirectional teacher, which cannot stream"):
        load_student("assets/toy_teacher.safetensors")
    with pytest.raises(ValueError, match="--prompt: .*outside the toy vocabulary"):
        load_student("assets/study/of_framewise_1step_ffe_seed0.safetensors", prompt="a purple cow")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device here; use --device cpu"):
            load_student("assets/study/of_framewise_1step_ffe_seed0.safetensors", device="cuda")
    text = build_parser().format_help()
    assert "127.0.0.1" in text and "reads no file path" in text
