// The flows of the official @fal-ai/client against a seedvr-local server, as a user writes them.
// The client is configured only with proxyUrl (and FAL_KEY from the environment, which it reads itself).
// Run by tests/server/test_js_client.py with PROXY_URL, WEBHOOK_URL, IMAGE_PATH, VIDEO_PATH and SLOW_SEED set;
// prints one JSON summary line, exits non-zero on the first failed check.
import { readFileSync } from "node:fs";
import { fal, ApiError, ValidationError } from "@fal-ai/client";

const APP = "fal-ai/seedvr/upscale/image";
const VIDEO_APP = "fal-ai/seedvr/upscale/video";
const { PROXY_URL, WEBHOOK_URL, IMAGE_PATH, VIDEO_PATH } = process.env;
const SLOW_SEED = Number(process.env.SLOW_SEED);
const serverBase = new URL(PROXY_URL).origin;

fal.config({ proxyUrl: { url: PROXY_URL, when: "always" } });

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function expectError(promise, what) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error(`${what}: expected an error`);
}

const summary = {};
const png = readFileSync(IMAGE_PATH);
const file = new File([png], "input.png", { type: "image/png" });

// storage upload of a File: initiate through the proxy, PUT straight to the server
const imageUrl = await fal.storage.upload(file);
check(imageUrl.startsWith(`${serverBase}/files/`) && imageUrl.endsWith("/input.png"), `upload url ${imageUrl}`);
summary.upload = imageUrl;

// subscribe (polling) with logs and queue updates
const updates = [];
const result = await fal.subscribe(APP, {
  input: { image_url: imageUrl, seed: 42, output_format: "png" },
  logs: true,
  pollInterval: 50,
  onQueueUpdate: (update) => updates.push(update),
});
check(result.data.image.width === 48 && result.data.seed === 42, `subscribe data ${JSON.stringify(result.data)}`);
check(result.requestId.length > 0, "subscribe requestId");
check(updates.at(-1).status === "COMPLETED", `last update ${updates.at(-1).status}`);
const polledLogs = updates.flatMap((update) => update.logs ?? []).map((log) => log.message);
check(polledLogs.some((message) => message.startsWith("dit")), `polled logs ${polledLogs}`);
summary.subscribe = { requestId: result.requestId, statuses: [...new Set(updates.map((u) => u.status))] };

// subscribe over server-sent events, with a Blob in the input (auto-uploaded); the slow seed keeps the job
// running until the stream is open, so it must report IN_PROGRESS (a fast job can finish before it connects)
const streamed = [];
const viaSse = await fal.subscribe(APP, {
  input: { image_url: new Blob([png], { type: "image/png" }), upscale_factor: 3, seed: SLOW_SEED },
  mode: "streaming",
  logs: true,
  onQueueUpdate: (update) => streamed.push(update),
});
check(viaSse.data.image.width === 72, "streaming subscribe output");
const streamedLogs = (streamed.at(-1).logs ?? []).map((log) => log.message);
check(streamedLogs[0].startsWith("download") && streamedLogs.at(-1).startsWith("done"), `sse logs ${streamedLogs}`);
check(new Set(streamedLogs).size === streamedLogs.length, "sse logs are not repeated");
summary.streaming = streamed.map((update) => update.status);

// queue.submit with a webhook, then status with logs, then result
const submitted = await fal.queue.submit(APP, {
  input: { image_url: imageUrl },
  webhookUrl: WEBHOOK_URL,
  priority: "low",
  startTimeout: 30,
});
check(submitted.status === "IN_QUEUE" && submitted.request_id, "submit answer");
let status;
for (let i = 0; i < 200; i++) {
  status = await fal.queue.status(APP, { requestId: submitted.request_id, logs: true });
  if (status.status === "COMPLETED") break;
  await sleep(25);
}
check(status.status === "COMPLETED" && status.logs.length > 0, `status ${JSON.stringify(status)}`);
check(status.metrics.inference_time > 0, "status metrics");
const queued = await fal.queue.result(APP, { requestId: submitted.request_id });
check(queued.data.image.url.startsWith(`${serverBase}/files/`) && queued.requestId === submitted.request_id, "result");
summary.webhookRequest = submitted.request_id;

// run (sync)
const ran = await fal.run(APP, { input: { image_url: imageUrl, sync_mode: true, output_format: "webp" } });
check(ran.data.image.url.startsWith("data:image/webp;base64,"), "run with sync_mode");

// cancel: a queued request, then a running one; both end COMPLETED and their result is an error
const slow = await fal.queue.submit(APP, { input: { image_url: imageUrl, seed: SLOW_SEED } });
for (let i = 0; i < 400; i++) {
  if ((await fal.queue.status(APP, { requestId: slow.request_id })).status === "IN_PROGRESS") break;
  await sleep(10);
}
const waiting = await fal.queue.submit(APP, { input: { image_url: imageUrl } });
await fal.queue.cancel(APP, { requestId: waiting.request_id });
await fal.queue.cancel(APP, { requestId: slow.request_id });
for (const requestId of [waiting.request_id, slow.request_id]) {
  const done = await fal.queue.subscribeToStatus(APP, { requestId, pollInterval: 50 });
  check(done.status === "COMPLETED" && done.error_type === "client_cancelled", `cancelled status ${JSON.stringify(done)}`);
  const error = await expectError(fal.queue.result(APP, { requestId }), "result of a cancelled request");
  check(error instanceof ApiError && error.status === 499, `cancelled result ${error}`);
}
const late = await expectError(fal.queue.cancel(APP, { requestId: submitted.request_id }), "cancel completed");
check(late instanceof ApiError && late.status === 400 && late.body.status === "ALREADY_COMPLETED", "cancel completed");
summary.cancel = "ok";

// validation errors: ValidationError with field errors, from run and from subscribe
const runError = await expectError(fal.run(APP, { input: { image_url: imageUrl, upscale_factor: 99 } }), "run 422");
check(runError instanceof ValidationError, `run error is ${runError?.constructor?.name}`);
check(runError.getFieldErrors("upscale_factor").length === 1, `field errors ${JSON.stringify(runError.fieldErrors)}`);
const subscribeError = await expectError(fal.subscribe(APP, { input: { output_format: "bmp" }, pollInterval: 50 }), "subscribe 422");
check(subscribeError instanceof ValidationError, `subscribe error is ${subscribeError?.constructor?.name}`);
const fields = subscribeError.fieldErrors.map((error) => error.loc.at(-1)).sort();
check(JSON.stringify(fields) === JSON.stringify(["image_url", "output_format"]), `fields ${fields}`);
summary.validation = fields;

// the seamless endpoint, called as any fal endpoint: over SSE with a Blob, queued with a webhook, cancelled; its
// output_format spells JPEG "jpeg" (the image endpoint's "jpg" is refused) and defaults to PNG
const SEAMLESS_APP = "fal-ai/seedvr/upscale/image/seamless";
const seamlessUpdates = [];
const seamless = await fal.subscribe(SEAMLESS_APP, {
  input: { image_url: new Blob([png], { type: "image/png" }), seed: 7 },
  mode: "streaming",
  logs: true,
  onQueueUpdate: (update) => seamlessUpdates.push(update),
});
check(seamless.data.image.content_type === "image/png" && seamless.data.seed === 7, `seamless ${JSON.stringify(seamless.data)}`);
check(seamless.data.image.width === 48 && seamlessUpdates.at(-1).status === "COMPLETED", "seamless subscribe");
const seamlessQueued = await fal.queue.submit(SEAMLESS_APP, {
  input: { image_url: imageUrl, output_format: "jpeg" },
  webhookUrl: WEBHOOK_URL.replace(/hook$/, "seamless-hook"),
});
const seamlessDone = await fal.queue.subscribeToStatus(SEAMLESS_APP, { requestId: seamlessQueued.request_id, pollInterval: 50 });
check(seamlessDone.status === "COMPLETED" && !seamlessDone.error, `seamless status ${JSON.stringify(seamlessDone)}`);
const seamlessResult = await fal.queue.result(SEAMLESS_APP, { requestId: seamlessQueued.request_id });
check(seamlessResult.data.image.content_type === "image/jpeg", `seamless jpeg ${JSON.stringify(seamlessResult.data)}`);
const seamlessSlow = await fal.queue.submit(SEAMLESS_APP, { input: { image_url: imageUrl, seed: SLOW_SEED } });
await fal.queue.cancel(SEAMLESS_APP, { requestId: seamlessSlow.request_id });
const seamlessCancelled = await fal.queue.subscribeToStatus(SEAMLESS_APP, { requestId: seamlessSlow.request_id, pollInterval: 50 });
check(seamlessCancelled.error_type === "client_cancelled", `seamless cancel ${JSON.stringify(seamlessCancelled)}`);
const jpgError = await expectError(fal.run(SEAMLESS_APP, { input: { image_url: imageUrl, output_format: "jpg" } }), "seamless 422");
check(jpgError instanceof ValidationError && jpgError.getFieldErrors("output_format").length === 1, `seamless 422 ${jpgError}`);
summary.seamlessWebhookRequest = seamlessQueued.request_id;

// video: a File in the input (auto-uploaded), subscribe with logs, fal's enum strings; the test reads the output
// back with PyAV
const videoFile = new File([readFileSync(VIDEO_PATH)], "input.mp4", { type: "video/mp4" });
const videoUpdates = [];
const upscaled = await fal.subscribe(VIDEO_APP, {
  input: { video_url: videoFile, seed: 9, output_format: "VP9 (.webm)", output_quality: "medium", output_write_mode: "fast" },
  logs: true,
  pollInterval: 50,
  onQueueUpdate: (update) => videoUpdates.push(update),
});
const videoOut = upscaled.data.video;
check(videoOut.content_type === "video/webm" && upscaled.data.seed === 9, `video output ${JSON.stringify(upscaled.data)}`);
check(videoOut.url.startsWith(`${serverBase}/files/`) && videoOut.file_name.endsWith(".webm"), "video url");
const videoLogs = videoUpdates.flatMap((update) => update.logs ?? []).map((log) => log.message);
check(videoLogs.some((message) => /^frames: 9\/9 \(100%\), [0-9.]+ frames\/s, about \d+ s left$/.test(message)), `video logs ${videoLogs}`);

// the same video over server-sent events, run (sync) inline, and fal's strings are the only ones accepted
const streamedVideo = [];
const viaSseVideo = await fal.subscribe(VIDEO_APP, {
  input: { video_url: new Blob([readFileSync(VIDEO_PATH)], { type: "video/mp4" }), output_format: "GIF (.gif)" },
  mode: "streaming",
  logs: true,
  onQueueUpdate: (update) => streamedVideo.push(update),
});
check(viaSseVideo.data.video.content_type === "image/gif", "streaming video output");
const streamedVideoLogs = (streamedVideo.at(-1).logs ?? []).map((log) => log.message);
check(streamedVideoLogs.at(-1).startsWith("done: 64x48, 9 frames"), `sse video logs ${streamedVideoLogs}`);
const inline = await fal.run(VIDEO_APP, { input: { video_url: videoOut.url, sync_mode: true, upscale_factor: 1 } });
check(inline.data.video.url.startsWith("data:video/mp4;base64,"), "video run with sync_mode");
const videoError = await expectError(fal.run(VIDEO_APP, { input: { video_url: videoOut.url, output_format: "mp4" } }), "video 422");
check(videoError instanceof ValidationError && videoError.getFieldErrors("output_format").length === 1, `video 422 ${videoError}`);
summary.video = { url: videoOut.url, gif: viaSseVideo.data.video.url, inlineSize: inline.data.video.file_size };

console.log(JSON.stringify(summary));
