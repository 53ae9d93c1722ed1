"""The real JS `@fal-ai/client` (from npm, pinned in tests/js) against a live server, via its proxy protocol."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests import requires
from seedvr_local.video.samples import make_video
from tests.server.helpers import FakeEngine, LiveServer, LocalHTTP, SlowSeeds, png_bytes
from tests.video_helpers import read_video

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SLOW_SEED = 777
KEY = "js-key"


@pytest.fixture(scope="session")
def node() -> str:
    """node, with tests/js's packages installed (`npm ci` when they are not)."""
    node = requires.executable("node", "the JS client tests need node >= 18 and npm")
    if not (JS_DIR / "node_modules" / "@fal-ai" / "client").is_dir():
        npm = requires.executable("npm", "needed to install tests/js: npm ci --prefix tests/js")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"npm ci in tests/js failed:\n{done.stderr[-2000:]}"
    return node


@pytest.fixture(params=["fake", "tiny"])
def flow_engine(request):
    """The fake engine (server logic alone), then the real model with the tiny bundle."""
    if request.param == "fake":
        return FakeEngine(slow_seeds={SLOW_SEED: 1.0})
    return SlowSeeds(request.getfixturevalue("tiny_upscaler"), {SLOW_SEED: 1.0})


def test_js_client_flows_through_the_proxy(node, tmp_path, settings, flow_engine):
    settings.api_keys = (KEY,)
    settings.allow_private_urls = True  # the webhook receiver is on this machine
    image = tmp_path / "input.png"
    image.write_bytes(png_bytes(24, 16))
    video = make_video(tmp_path / "input.mp4", 32, 24, frames=9, fps=12, audio="aac")
    engine = flow_engine
    hooks = {"/hook": (200, {}, b""), "/seamless-hook": (200, {}, b"")}
    with LocalHTTP(hooks) as receiver, LiveServer(settings, lambda: engine) as server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FAL_")},
            "PROXY_URL": f"{server.url}/api/fal/proxy",
            "WEBHOOK_URL": f"{receiver.url}/hook",
            "IMAGE_PATH": str(image),
            "VIDEO_PATH": str(video),
            "SLOW_SEED": str(SLOW_SEED),
            "FAL_KEY": KEY,
        }
        done = subprocess.run([node, "flows.mjs"], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        bodies = {path: body for _, path, _, body in receiver.wait_for(2)}
        jobs = server.state.jobs
        assert jobs.get(summary["webhookRequest"]).priority == 1
        outputs = {}
        for name in ("url", "gif"):
            outputs[name] = tmp_path / f"output-{name}"
            outputs[name].write_bytes(httpx.get(summary["video"][name]).raise_for_status().content)
    hook, seamless_hook = json.loads(bodies["/hook"]), json.loads(bodies["/seamless-hook"])
    assert hook["status"] == "OK" and hook["request_id"] == summary["webhookRequest"]
    assert hook["payload"]["image"]["width"] == 48
    assert seamless_hook["request_id"] == summary["seamlessWebhookRequest"]
    assert seamless_hook["payload"]["image"]["content_type"] == "image/jpeg"
    assert summary["streaming"][-1] == "COMPLETED" and "IN_PROGRESS" in summary["streaming"]
    assert summary["validation"] == ["image_url", "output_format"]
    webm, gif = read_video(outputs["url"]), read_video(outputs["gif"])
    assert (webm["codec"], webm["width"], webm["height"], webm["frames"]) == ("vp9", 64, 48, 9)
    assert webm["average_rate"] == 12 and webm["audio"] == "opus"
    assert (gif["codec"], gif["frames"], gif["audio"]) == ("gif", 9, None)
    assert summary["video"]["inlineSize"] > 0


def test_js_client_is_refused_without_the_key(node, tmp_path, settings):
    settings.api_keys = (KEY,)
    script = (
        "import {fal, ApiError} from '@fal-ai/client';"
        "fal.config({proxyUrl: {url: process.env.PROXY_URL, when: 'always'}});"
        "try { await fal.run('fal-ai/seedvr/upscale/image', {input: {image_url: 'data:,'}}); process.exit(3); }"
        "catch (e) { console.log(JSON.stringify({status: e.status, detail: e.body?.detail})); }"
    )
    with LiveServer(settings, FakeEngine) as server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FAL_")},
            "PROXY_URL": f"{server.url}/api/fal/proxy",
        }
        done = subprocess.run(
            [node, "--input-type=module", "-e", script], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["status"] == 401 and "Authorization" in answer["detail"]


def test_js_client_uploads_a_large_file_in_parts(node, settings):
    """The client switches to its multipart protocol over 90 MiB: the server must take the parts and serve back
    the same bytes."""
    settings.api_keys = (KEY,)
    with LiveServer(settings, FakeEngine) as server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FAL_")},
            "PROXY_URL": f"{server.url}/api/fal/proxy",
            "UPLOAD_MIB": "91",
            "FAL_KEY": KEY,
        }
        done = subprocess.run([node, "multipart.mjs"], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        file_id = summary["url"].split("/files/", 1)[1].split("/", 1)[0]
        stored = server.state.files.get(file_id)
    assert stored is not None and stored.multipart, "the client did not use the multipart protocol"
    assert summary["status"] == 200 and summary["servedSize"] == summary["size"]
    assert summary["servedSha256"] == summary["sha256"]
