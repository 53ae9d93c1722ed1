"""The flows of the real `fal-client` package against a seedvr-local server.

Run by test_fal_client.py in a fresh interpreter, configured only as a user would: FAL_RUN_HOST,
FAL_QUEUE_RUN_HOST, SSL_CERT_FILE and FAL_KEY in the environment (fal_client reads them on import).
SLOW_SEED makes the test server's fake engine take a second; VIDEO_PATH is a small video (9 frames of 32x24).
Prints one JSON summary line.
"""

from __future__ import annotations

import json
import os
import sys

import fal_client
from PIL import Image

APP = "fal-ai/seedvr/upscale/image"
VIDEO_APP = "fal-ai/seedvr/upscale/video"
SEAMLESS_APP = "fal-ai/seedvr/upscale/image/seamless"
SLOW_SEED = int(os.environ["SLOW_SEED"])
summary: dict = {}


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def main() -> None:
    image = Image.new("RGB", (24, 16), (10, 200, 30))
    image_url = fal_client.encode_image(image, format="png")  # a data: URI, no upload needed
    check(image_url.startswith("data:image/png;base64,"), "encode_image gives a data URI")

    # run (sync)
    output = fal_client.run(APP, {"image_url": image_url, "seed": 5, "output_format": "png"})
    check(output["image"]["width"] == 48 and output["seed"] == 5, f"run output {output}")
    summary["run"] = output["image"]["url"]

    # subscribe with logs and queue updates
    updates = []
    result = fal_client.subscribe(
        APP,
        {"image_url": image_url, "upscale_factor": 3},
        with_logs=True,
        on_queue_update=updates.append,
        on_enqueue=lambda request_id: summary.setdefault("enqueued", request_id),
    )
    check(result["image"]["width"] == 72, f"subscribe output {result}")
    kinds = [type(update).__name__ for update in updates]
    check(kinds[-1] == "Completed", f"subscribe updates {kinds}")
    messages = [
        log["message"] for update in updates if isinstance(update, fal_client.InProgress) for log in update.logs or []
    ]
    messages += [log["message"] for log in (updates[-1].logs or [])]
    check(any(message.startswith("dit") for message in messages), f"logs seen {messages}")
    summary["subscribe_updates"] = kinds

    # submit + status + result, by handle and by id
    handle = fal_client.submit(
        APP, {"image_url": image_url}, priority="low", start_timeout=30.0, headers={"x-custom": "1"}
    )
    status = fal_client.status(APP, handle.request_id, with_logs=True)
    check(type(status).__name__ in ("Queued", "InProgress", "Completed"), f"status {status}")
    output = fal_client.result(APP, handle.request_id)
    check(output == handle.get(), "result by id equals handle.get()")
    final = handle.status(with_logs=True)
    check(isinstance(final, fal_client.Completed) and final.metrics.get("inference_time", 0) > 0, f"final {final}")
    summary["submit"] = handle.request_id

    # iter_events over the server's status URLs
    events = [
        type(event).__name__ for event in fal_client.submit(APP, {"image_url": image_url}).iter_events(with_logs=True)
    ]
    check(events[-1] == "Completed", f"iter_events {events}")

    # cancel: a queued request never runs; a running one stops; a completed one is a 400
    slow = fal_client.submit(APP, {"image_url": image_url, "seed": SLOW_SEED})
    for _ in range(1000):
        if isinstance(slow.status(), fal_client.InProgress):
            break
    else:
        raise AssertionError("the slow request never started")
    queued = fal_client.submit(APP, {"image_url": image_url})
    check(isinstance(queued.status(), fal_client.Queued), "queued behind the slow request")
    fal_client.cancel(APP, queued.request_id)
    try:
        queued.get()
        raise AssertionError("a cancelled request has no result")
    except fal_client.FalClientHTTPError as exc:
        check(
            exc.status_code == 499 and exc.error_type == "client_cancelled", f"cancelled result {exc.status_code} {exc}"
        )
    slow.cancel()
    try:
        slow.get()
        raise AssertionError("a cancelled running request has no result")
    except fal_client.FalClientHTTPError as exc:
        check(exc.status_code == 499, f"cancelled running {exc.status_code}")
    try:
        fal_client.cancel(APP, handle.request_id)
        raise AssertionError("cancelling a completed request is an error")
    except fal_client.FalClientHTTPError as exc:
        check(exc.status_code == 400, f"cancel completed {exc.status_code}")
    summary["cancel"] = "ok"

    # validation errors surface as FalClientHTTPError with fal's detail list
    try:
        fal_client.run(APP, {"image_url": image_url, "upscale_factor": 99})
        raise AssertionError("invalid input must fail")
    except fal_client.FalClientHTTPError as exc:
        check(exc.status_code == 422 and exc.message[0]["loc"] == ["body", "upscale_factor"], f"run 422 {exc.message}")
    try:
        fal_client.subscribe(APP, {"output_format": "bmp"})
        raise AssertionError("invalid queued input must fail")
    except fal_client.FalClientHTTPError as exc:
        check(exc.status_code == 422, f"subscribe 422 {exc.status_code}")
        locs = [item["loc"] for item in exc.message]
        check(["body", "image_url"] in locs and ["body", "output_format"] in locs, f"subscribe 422 {locs}")
    summary["validation"] = "ok"

    # uploads: fal_client's storage hosts are fixed, so point them here (the README's sitecustomize recipe)
    base = "https://" + os.environ["FAL_RUN_HOST"].rsplit("/run", 1)[0]
    fal_client.client.REST_URL = base
    fal_client.client.CDN_URL = base
    uploaded = fal_client.upload_image(image, format="png")
    check(uploaded.startswith(base + "/files/"), f"upload_image {uploaded}")
    output = fal_client.run(APP, {"image_url": uploaded})
    check(output["image"]["width"] == 48, "an uploaded file as image_url")
    summary["upload"] = uploaded

    seamless_flows(image, image_url)
    video_flows()


def seamless_flows(image: Image.Image, image_url: str) -> None:
    """The seamless endpoint, called as any fal endpoint: its own output_format spelling ("jpeg"), PNG by default."""
    output = fal_client.run(SEAMLESS_APP, {"image_url": image_url, "seed": 6, "output_format": "jpeg"})
    check(output["image"]["content_type"] == "image/jpeg" and output["seed"] == 6, f"seamless run {output}")
    check((output["image"]["width"], output["image"]["height"]) == (48, 32), f"seamless run size {output}")

    updates = []
    result = fal_client.subscribe(
        SEAMLESS_APP, {"image_url": fal_client.upload_image(image, format="png"), "enable_safety_checker": False},
        with_logs=True, on_queue_update=updates.append,
    )  # fmt: skip
    check(result["image"]["content_type"] == "image/png", f"seamless subscribe (PNG by default) {result}")
    check(type(updates[-1]).__name__ == "Completed", f"seamless updates {updates}")

    handle = fal_client.submit(SEAMLESS_APP, {"image_url": image_url, "upscale_factor": 1.5})
    output = fal_client.result(SEAMLESS_APP, handle.request_id)
    check(output["image"]["width"] == 36, f"seamless queue result {output}")
    status = fal_client.status(SEAMLESS_APP, handle.request_id, with_logs=True)
    check(type(status).__name__ == "Completed", f"seamless status {status}")
    summary["seamless"] = [output["image"]["url"], result["image"]["url"]]

    try:
        fal_client.run(SEAMLESS_APP, {"image_url": image_url, "output_format": "jpg"})  # the image endpoint's spelling
        raise AssertionError("'jpg' is not a format of the seamless endpoint")
    except fal_client.FalClientHTTPError as exc:
        check(exc.status_code == 422 and exc.message[0]["loc"][-1] == "output_format", f"seamless 422 {exc.message}")


def video_flows() -> None:
    video_path = os.environ["VIDEO_PATH"]
    video_url = fal_client.encode_file(video_path)  # a data: URI
    check(video_url.startswith("data:video/mp4;base64,"), "encode_file gives a video data URI")

    output = fal_client.run(VIDEO_APP, {"video_url": video_url, "seed": 4, "output_format": "PRORES4444 (.mov)"})
    check(output["video"]["content_type"] == "video/quicktime" and output["seed"] == 4, f"video run {output}")
    summary["video_run"] = output["video"]["url"]

    updates = []
    result = fal_client.subscribe(
        VIDEO_APP, {"video_url": fal_client.upload_file(video_path), "output_quality": "low"},
        with_logs=True, on_queue_update=updates.append,
    )  # fmt: skip
    check(result["video"]["content_type"] == "video/mp4", f"video subscribe {result}")
    messages = [log["message"] for update in updates for log in (getattr(update, "logs", None) or [])]
    check(any(message.startswith("frames: 9/9 (100%)") for message in messages), f"video logs {messages}")
    summary["video_subscribe"] = result["video"]["url"]

    try:
        fal_client.run(VIDEO_APP, {"video_url": video_url, "output_format": "mp4", "noise_scale": 2})
        raise AssertionError("a format that is not fal's string must fail")
    except fal_client.FalClientHTTPError as exc:
        locs = sorted(item["loc"][-1] for item in exc.message)
        check(exc.status_code == 422 and locs == ["noise_scale", "output_format"], f"video 422 {exc.message}")


if __name__ == "__main__":
    main()
    print(json.dumps(summary))
    sys.stdout.flush()
