// Drives the playground page (GET /) in headless Chromium for tests/server/test_playground_browser.py.
//
// Environment: BASE_URL (the server), CHROMIUM (the browser's executable), SCENARIO, and per scenario:
//   image:  IMAGE_PATH, OUT_DIR (downloads), SCREENSHOT (optional: a PNG of the finished run)
//   video:  VIDEO_PATH, OUT_DIR, SCREENSHOT (optional)
//   keyed:  IMAGE_PATH, KEY (the server's API key); prints "RELEASE" each time the test's engine may let one
//           held request go on (the test reads stdout line by line)
// Prints observations as one JSON object on the last line; the Python test asserts on them. Every request
// the browser makes is recorded in `requests`.
import { chromium } from "playwright-core";
import path from "node:path";

const env = process.env;
const WAIT = { timeout: 120_000 };
const IMAGE_ENDPOINT = "fal-ai/seedvr/upscale/image";
const VIDEO_ENDPOINT = "fal-ai/seedvr/upscale/video";

const browser = await chromium.launch({
  executablePath: env.CHROMIUM,
  args: [
    "--no-sandbox", // CI containers run as root
    "--disable-dev-shm-usage",
    // a second line of defence: no host but 127.0.0.1 resolves (the recorded requests are the proof)
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
  ],
});
const VIEWPORT = { width: 1280, height: 900 };
const context = await browser.newContext({ acceptDownloads: true, viewport: VIEWPORT });
const requests = [];
context.on("request", (request) => requests.push(request.url()));
const page = await context.newPage();
page.on("websocket", (socket) => requests.push(socket.url()));
const consoleErrors = [];
page.on("pageerror", (error) => consoleErrors.push(String(error)));

const text = (selector) => page.locator(selector).innerText();
const waitReady = () => page.waitForSelector("body[data-ready=true]", WAIT);

async function chooseEndpoint(id) {
  // with a single endpoint the chooser is disabled, and already on it
  if ((await page.inputValue("#endpoint")) !== id) await page.selectOption("#endpoint", id);
}

/** Waits for the run's end; its status line, and the error box's text when it failed. */
async function waitForEnd() {
  await page.waitForSelector("#status[data-state=done], #status[data-state=failed]", WAIT);
  return {
    state: await page.getAttribute("#status", "data-state"),
    status: await text("#status"),
    error: (await page.isVisible("#error")) ? await text("#error") : null,
  };
}

async function facts() {
  return page.$$eval("#facts dd", (cells) => Object.fromEntries(cells.map((cell) => [cell.dataset.fact, cell.textContent])));
}

async function clientCode() {
  const code = {};
  for (const language of ["js", "python", "curl"]) {
    await page.click(`#tab-${language}`);
    code[language] = await text("#code");
  }
  return code;
}

/** What the Copy button puts on the clipboard, for the tab shown. */
async function copied() {
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: env.BASE_URL });
  await page.click("#copy");
  await page.waitForSelector("#copied:has-text('Copied')", WAIT);
  return { shown: await page.textContent("#code"), clipboard: await page.evaluate(() => navigator.clipboard.readText()) };
}

async function download(name) {
  const [file] = await Promise.all([page.waitForEvent("download", WAIT), page.click("#download")]);
  const saved = path.join(env.OUT_DIR, name);
  await file.saveAs(saved);
  return { path: saved, suggested: file.suggestedFilename(), href: await page.getAttribute("#download", "href") };
}

async function uploadAndRun(field, file) {
  await page.setInputFiles(`#f-${field}-file`, file);
  await page.waitForSelector(".drop[data-uploaded=true], #error:not([hidden])", WAIT);
  const uploaded = await page.inputValue(`#f-${field}`);
  await page.click("#run");
  const end = await waitForEnd();
  return { uploaded, ...end };
}

async function imageRun() {
  await chooseEndpoint(IMAGE_ENDPOINT);
  const run = await uploadAndRun("image_url", env.IMAGE_PATH);
  if (run.state !== "done") return run;
  await page.waitForFunction(() => {
    const images = document.querySelectorAll("#compare-stage img");
    return images.length === 2 && [...images].every((image) => image.complete && image.naturalWidth > 0);
  }, null, WAIT);
  const view = () =>
    page.evaluate(() => {
      const box = (node) => {
        const rect = node.getBoundingClientRect();
        return { width: rect.width, height: rect.height, left: rect.left, top: rect.top };
      };
      const after = document.querySelector("#compare-stage .after");
      const before = document.querySelector("#compare-stage .before");
      return {
        after: { natural: [after.naturalWidth, after.naturalHeight], box: box(after) },
        before: { natural: [before.naturalWidth, before.naturalHeight], box: box(before), clip: getComputedStyle(before).clipPath },
        stage: box(document.querySelector("#compare-stage")),
        split: document.querySelector("#split").value,
        devicePixelRatio: window.devicePixelRatio,
        zoomPressed: document.querySelector("#zoom").getAttribute("aria-pressed"),
      };
    });
  const fitted = await view();
  // the split moves with the keyboard: the slider is a native range input
  await page.focus("#split");
  for (let i = 0; i < 10; i++) await page.keyboard.press("ArrowLeft");
  const moved = await view();
  await page.focus("#zoom");
  await page.keyboard.press("Enter");
  const zoomed = await view();
  await page.keyboard.press("Enter");
  await page.fill("#split", "50");
  await page.dispatchEvent("#split", "input");
  const result = {
    ...run,
    phases: await page.$$eval("#phases li", (items) => items.map((item) => item.textContent)),
    logs: await page.textContent("#logs"),
    facts: await facts(),
    code: await clientCode(),
    copied: await copied(),
    fitted,
    moved,
    zoomed,
    download: await download("image-output"),
  };
  if (env.SCREENSHOT) {
    await page.click("#tab-js");
    await page.evaluate(() => document.activeElement.blur());
    await page.screenshot({ path: env.SCREENSHOT, fullPage: true });
  }
  // the finished view at phone width: nothing wider than the screen
  await page.setViewportSize({ width: 390, height: 844 });
  result.phone = await page.evaluate(() => ({
    viewport: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    stageWidth: document.querySelector("#compare-stage").getBoundingClientRect().width,
  }));
  await page.setViewportSize(VIEWPORT);
  return result;
}

async function videoRun() {
  await chooseEndpoint(VIDEO_ENDPOINT);
  const run = await uploadAndRun("video_url", env.VIDEO_PATH);
  if (run.state !== "done") return run;
  // both videos decodable by the browser, then played together
  await page.waitForFunction(() => {
    const videos = document.querySelectorAll(".side-by-side video");
    return videos.length === 2 && [...videos].every((video) => video.readyState >= 2 && video.videoWidth > 0);
  }, null, WAIT);
  const videos = () =>
    page.$$eval(".side-by-side video", (items) =>
      items.map((video) => ({
        size: [video.videoWidth, video.videoHeight],
        duration: video.duration,
        time: video.currentTime,
        paused: video.paused,
        error: video.error && video.error.message,
      })),
    );
  const loaded = await videos();
  await page.focus("#play");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => {
    const videos = [...document.querySelectorAll(".side-by-side video")];
    return videos.every((video) => !video.paused && video.currentTime > 0);
  }, null, WAIT);
  const playing = await videos();
  await page.keyboard.press("Enter"); // pause both
  await page.waitForFunction(() => [...document.querySelectorAll(".side-by-side video")].every((video) => video.paused), null, WAIT);
  const paused = await videos();
  if (env.SCREENSHOT) await page.screenshot({ path: env.SCREENSHOT, fullPage: true });
  return { ...run, facts: await facts(), code: await clientCode(), loaded, playing, paused, download: await download("video-output") };
}

async function openPage() {
  await page.goto(`${env.BASE_URL}/`);
  await waitReady();
  return page.$$eval("#endpoint option", (options) => options.map((option) => option.value));
}

async function scenarioImage() {
  const endpoints = await openPage();
  return { endpoints, image: await imageRun() };
}

async function scenarioVideo() {
  const endpoints = await openPage();
  return { endpoints, video: await videoRun() };
}

/** A key prompt, an input error, a keyboard-only upload and run, the queue, and a cancel. */
async function scenarioKeyed() {
  const observed = {};
  await page.goto(`${env.BASE_URL}/playground`);
  await waitReady();
  // an invalid URL, submitted with Enter: first the server asks for a key, then refuses the input
  await page.focus("#f-image_url");
  await page.keyboard.type("not-a-url");
  await page.keyboard.press("Enter");
  await page.waitForSelector("#key-panel:not([hidden])", WAIT);
  observed.keyMissing = await text("#key-reason");
  await page.keyboard.type("wrong-key"); // the prompt took the focus
  await page.keyboard.press("Enter");
  await page.waitForFunction((before) => document.querySelector("#key-reason").textContent !== before, observed.keyMissing, WAIT);
  observed.keyWrong = await text("#key-reason");
  await page.keyboard.type(env.KEY);
  await page.keyboard.press("Enter");
  const invalid = await waitForEnd();
  observed.invalid = { ...invalid, fieldError: await text("#f-image_url-error"), ariaInvalid: await page.getAttribute("#f-image_url", "aria-invalid") };
  observed.storedKey = await page.evaluate(() => sessionStorage.getItem("seedvr-local.api-key"));

  // the file, with the keyboard: the drop zone's file input follows the endpoint chooser in the tab order.
  // The form first: the finished run hands it back (a disabled chooser takes no focus), and the page has the
  // keyboard (the key prompt it just closed held it).
  await page.waitForSelector("#run:enabled", WAIT);
  await page.bringToFront();
  await page.focus("#endpoint");
  await page.keyboard.press("Tab");
  observed.afterChooser = await page.evaluate(() => document.activeElement.id);
  if (observed.afterChooser !== "f-image_url-file") return observed; // the test names what had the focus instead
  const [chooser] = await Promise.all([page.waitForEvent("filechooser", WAIT), page.keyboard.press("Space")]);
  await chooser.setFiles(env.IMAGE_PATH);
  await page.waitForSelector(".drop[data-uploaded=true], #error:not([hidden])", WAIT);
  observed.uploaded = await page.inputValue("#f-image_url");

  // another request takes the model first, so this one waits in the queue
  const first = await page.evaluate(
    async ({ url, key }) => {
      const headers = { Authorization: `Key ${key}`, "Content-Type": "application/json" };
      const response = await fetch("queue/fal-ai/seedvr/upscale/image", { method: "POST", headers, body: JSON.stringify({ image_url: url }) });
      const body = await response.json();
      for (;;) {
        const status = await (await fetch(`queue/fal-ai/seedvr/requests/${body.request_id}/status`, { headers })).json();
        if (status.status !== "IN_QUEUE") return status;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
    { url: observed.uploaded, key: env.KEY },
  );
  observed.firstStatus = first.status;

  // Tab from the URL field to the Run button, and press Enter
  await page.focus("#f-image_url");
  for (let i = 0; i < 40 && (await page.evaluate(() => document.activeElement.id)) !== "run"; i++) await page.keyboard.press("Tab");
  observed.reachedRun = await page.evaluate(() => document.activeElement.id);
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => /queue/i.test(document.querySelector("#status").textContent), null, WAIT);
  observed.queued = await text("#status");
  console.log("RELEASE"); // the first request finishes; this one starts and is held in its "dit" phase
  await page.waitForSelector("#phases li.current:has-text('dit')", WAIT);
  observed.running = await text("#status");
  observed.phasesRunning = await page.$$eval("#phases li", (items) => items.map((item) => `${item.className}:${item.textContent}`));

  await page.focus("#cancel");
  const [cancelled] = await Promise.all([
    page.waitForResponse((response) => response.url().endsWith("/cancel"), WAIT),
    page.keyboard.press("Enter"),
  ]);
  observed.cancelStatus = cancelled.status();
  console.log("RELEASE"); // let it reach the next phase boundary, where it stops
  observed.cancelledRun = await waitForEnd();
  observed.code = await clientCode();
  return observed;
}

let summary;
try {
  const scenarios = { image: scenarioImage, video: scenarioVideo, keyed: scenarioKeyed };
  summary = await scenarios[env.SCENARIO]();
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ...summary, requests, consoleErrors }));
