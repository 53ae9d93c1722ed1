// The playground of seedvr-local: a form built from this server's /openapi.json, the storage upload and the
// queue of the fal protocol (the routes the fal clients use), and a before/after view of the result.
// Every URL is relative to the page, so the page also works behind a reverse proxy that adds a path prefix.
"use strict";

/** The endpoints the page offers: every queue submit route in the OpenAPI document, `POST /queue/<endpoint id>`
 * (a fal endpoint id is owner/alias/path; the request routes below it carry a `{request_id}`). */
const SUBMIT_PATH = /^\/queue\/([^/{}]+\/[^/{}]+\/[^{}]+)$/;
const KEY_STORAGE = "seedvr-local.api-key";
/** A URL field named `<kind>_url` takes a file of that kind (`image_url` -> image/*). */
const MEDIA_KINDS = ["image", "video", "audio"];

const $ = (id) => document.getElementById(id);

const page = {
  document: null, // the OpenAPI document
  endpoints: new Map(), // id -> {id, appId, schema, fields}
  endpoint: null,
  fields: [], // the form's fields of the chosen endpoint
  uploading: null, // the promise of the upload in flight
  run: null, // the run in flight
  lastRun: null,
  codeTab: "js",
};

// ---------------------------------------------------------------- errors

class ApiError extends Error {
  /** An error answer of the server; `detail` is its `detail` (a string, or fal's list of input errors). */
  constructor(status, detail) {
    super(detailText(detail) || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        const where = (item.loc || []).filter((part) => part !== "body").join(".");
        return where ? `${where}: ${item.msg}` : item.msg;
      })
      .join("\n");
  }
  return detail == null ? "" : JSON.stringify(detail);
}

function showError(error) {
  const box = $("error");
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
  if (error instanceof ApiError && Array.isArray(error.detail)) markFields(error.detail);
}

function clearError() {
  $("error").hidden = true;
  for (const field of page.fields) field.setError("");
}

/** Input errors next to the fields they name (`loc: ["body", <field>, ...]`). */
function markFields(detail) {
  for (const item of detail) {
    const loc = item.loc || [];
    const field = page.fields.find((f) => loc[0] === "body" && loc[1] === f.spec.name);
    if (field) field.setError(item.msg);
  }
}

window.addEventListener("error", (event) => showError(event.error || event.message));
window.addEventListener("unhandledrejection", (event) => showError(event.reason));

// ---------------------------------------------------------------- talking to the server

/** `path` (as the OpenAPI document writes it, from the root) relative to this page. */
function href(path) {
  return new URL(path.replace(/^\//, ""), document.baseURI).href;
}

async function readDetail(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    return body && typeof body === "object" && "detail" in body ? body.detail : body;
  } catch {
    return text || `HTTP ${response.status} ${response.statusText}`;
  }
}

/** fetch with the API key; a 401 asks for a key (the server's detail says why) and tries again. */
async function request(method, url, { json, accept = "application/json" } = {}) {
  for (;;) {
    const headers = { Accept: accept };
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers.Authorization = `Key ${key}`;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    }
    const response = await fetch(url, { method, headers, body });
    if (response.status === 401) {
      await askForKey(await readDetail(response));
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await readDetail(response));
    return response;
  }
}

async function requestJson(method, url, options) {
  return (await request(method, url, options)).json();
}

const keyWaiters = [];

function askForKey(reason) {
  $("key-reason").textContent = detailText(reason);
  $("key-panel").hidden = false;
  $("key-input").value = "";
  $("key-input").focus();
  return new Promise((resolve, reject) => keyWaiters.push({ resolve, reject, reason }));
}

function answerKeyPrompt(key) {
  $("key-panel").hidden = true;
  for (const waiter of keyWaiters.splice(0)) {
    if (key) waiter.resolve();
    else waiter.reject(new ApiError(401, waiter.reason));
  }
}

/** fal's storage flow, as `fal.storage.upload` runs it: initiate, then PUT the bytes to the URL handed out. */
async function uploadFile(file, onProgress) {
  const type = file.type || "application/octet-stream";
  const target = await requestJson("POST", href("storage/upload/initiate"), {
    json: { content_type: type, file_name: file.name },
  });
  await new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest(); // fetch cannot report upload progress
    xhr.open("PUT", target.upload_url);
    xhr.setRequestHeader("Content-Type", type);
    xhr.upload.onprogress = (event) => event.lengthComputable && onProgress(event.loaded / event.total);
    xhr.onload = () => {
      if (xhr.status < 300) return resolve();
      let detail = xhr.responseText;
      try {
        detail = JSON.parse(xhr.responseText).detail;
      } catch {
        // not JSON: the text is the detail
      }
      reject(new ApiError(xhr.status, detail));
    };
    xhr.onerror = () => reject(new Error(`the upload to ${target.upload_url} failed (network error)`));
    xhr.send(file);
  });
  return target.file_url;
}

/** The `data:` payloads of a server-sent event stream, parsed as JSON. */
async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------- the schema

function resolve(schema, roots) {
  let node = schema || {};
  for (let depth = 0; node.$ref && depth < 32; depth++) node = lookup(node.$ref, roots);
  return node;
}

/** A local `#/...` reference, in the schema itself (pydantic's `$defs`) or in the document. */
function lookup(ref, roots) {
  if (!ref.startsWith("#/")) throw new Error(`the page cannot follow the schema reference ${ref}`);
  const parts = ref.slice(2).split("/").map((part) => part.replace(/~1/g, "/").replace(/~0/g, "~"));
  for (const root of roots) {
    let node = root;
    for (const part of parts) node = node == null ? undefined : node[part];
    if (node) return node;
  }
  throw new Error(`the schema reference ${ref} points nowhere`);
}

function findEndpoints(doc) {
  const endpoints = new Map();
  for (const [path, operations] of Object.entries(doc.paths || {})) {
    const match = path.match(SUBMIT_PATH);
    const content = operations.post?.requestBody?.content?.["application/json"];
    if (!match || !content?.schema) continue;
    const id = match[1];
    const roots = [content.schema, doc];
    const schema = resolve(content.schema, roots);
    endpoints.set(id, {
      id,
      appId: id.split("/").slice(0, 2).join("/"), // status, result and cancel are addressed by owner/alias
      path,
      fields: fieldSpecs(schema, roots),
    });
  }
  return endpoints;
}

function fieldSpecs(schema, roots) {
  const required = new Set(schema.required || []);
  return Object.entries(schema.properties || {}).map(([name, raw]) => describe(name, raw, required.has(name), roots));
}

/** What the form needs to know of one property: its kind of control, default, range and choices. */
function describe(name, raw, required, roots) {
  const top = resolve(raw, roots);
  let schema = top;
  let nullable = false;
  const variants = top.anyOf || top.oneOf;
  if (variants) {
    const options = variants.map((variant) => resolve(variant, roots));
    const real = options.filter((option) => option.type !== "null");
    nullable = real.length < options.length;
    if (real.length === 1) schema = real[0];
    else if (real.every((option) => option.enum || option.const !== undefined)) {
      schema = { enum: real.flatMap((option) => option.enum || [option.const]) };
    } else schema = { type: "string" };
  }
  const types = [].concat(schema.type || []);
  if (types.includes("null")) nullable = true;
  const type = types.find((t) => t !== "null");
  const choices = schema.enum || (schema.const !== undefined ? [schema.const] : null);
  let kind = "text";
  if (choices) kind = "choice";
  else if (type === "boolean") kind = "boolean";
  else if (type === "integer" || type === "number") kind = "number";
  else if (type === "object" || type === "array") kind = "json";
  else if (/_url$/.test(name) || schema.format === "uri") kind = "media";
  return {
    name,
    kind,
    type,
    required,
    nullable,
    choices,
    title: top.title || schema.title || name,
    description: top.description || schema.description || "",
    default: "default" in top ? top.default : schema.default,
    minimum: schema.minimum ?? schema.exclusiveMinimum,
    maximum: schema.maximum ?? schema.exclusiveMaximum,
    media: MEDIA_KINDS.find((media) => name === `${media}_url`) || null,
  };
}

// ---------------------------------------------------------------- the form

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child != null));
  return node;
}

function sameValue(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** One form field: its element, `read()` (undefined: leave the property out, the server's default applies). */
function buildField(spec) {
  const id = `f-${spec.name}`;
  const error = el("p", { class: "field-error", id: `${id}-error`, "aria-live": "polite" });
  const range =
    spec.minimum !== undefined || spec.maximum !== undefined
      ? ` (${spec.minimum ?? "…"} to ${spec.maximum ?? "…"})`
      : "";
  const help = el("p", { class: "help", id: `${id}-help`, text: spec.description + range });
  const described = `${id}-help ${id}-error`;
  const field = {
    spec,
    element: null,
    control: null,
    read: () => undefined,
    setError(message) {
      error.textContent = message;
      if (message) field.control.setAttribute("aria-invalid", "true");
      else field.control.removeAttribute("aria-invalid");
    },
  };
  const label = el("label", { for: id }, el("code", { text: spec.name }), spec.required ? " (required)" : "");
  if (spec.kind === "media") return buildMediaField(field, id, label, help, error, described);

  if (spec.kind === "choice") {
    const select = el("select", { id, name: spec.name, "aria-describedby": described });
    if (spec.default === undefined && !spec.required) select.append(el("option", { value: "", text: "(not set)" }));
    spec.choices.forEach((choice, index) => {
      select.append(el("option", { value: String(index), text: String(choice), selected: sameValue(choice, spec.default) }));
    });
    field.control = select;
    field.read = () => {
      if (select.value === "") return undefined;
      const value = spec.choices[Number(select.value)];
      return sameValue(value, spec.default) ? undefined : value;
    };
  } else if (spec.kind === "boolean") {
    const box = el("input", { id, type: "checkbox", name: spec.name, checked: spec.default === true, "aria-describedby": described });
    field.control = box;
    field.read = () => (box.checked === (spec.default === true) ? undefined : box.checked);
  } else if (spec.kind === "number") {
    const input = el("input", {
      id,
      type: "number",
      name: spec.name,
      inputmode: spec.type === "integer" ? "numeric" : "decimal",
      step: spec.type === "integer" ? "1" : "any",
      min: spec.minimum,
      max: spec.maximum,
      value: spec.default ?? undefined,
      placeholder: spec.default == null ? "not set" : undefined,
      "aria-describedby": described,
    });
    field.control = input;
    field.read = () => {
      // not a number: sent as typed, so the server says what is wrong with it
      if (input.validity.badInput) return input.value;
      if (input.value.trim() === "") return undefined;
      const value = Number(input.value);
      return sameValue(value, spec.default) ? undefined : value;
    };
  } else if (spec.kind === "json") {
    const area = el("textarea", { id, name: spec.name, rows: "3", "aria-describedby": described, spellcheck: "false" });
    area.value = spec.default === undefined ? "" : JSON.stringify(spec.default);
    field.control = area;
    field.read = () => {
      if (area.value.trim() === "") return undefined;
      let value;
      try {
        value = JSON.parse(area.value);
      } catch {
        return area.value; // the server's 422 says what is wrong with it
      }
      return sameValue(value, spec.default) ? undefined : value;
    };
  } else {
    const input = el("input", { id, type: "text", name: spec.name, "aria-describedby": described });
    input.value = spec.default ?? "";
    field.control = input;
    field.read = () => {
      const value = input.value;
      return value === "" || sameValue(value, spec.default) ? undefined : value;
    };
  }
  const inline = spec.kind === "boolean";
  field.element = el("div", { class: inline ? "field inline" : "field" }, inline ? field.control : label, inline ? label : field.control, help, error);
  return field;
}

function buildMediaField(field, id, label, help, error, described) {
  const spec = field.spec;
  const kind = spec.media || "file";
  const accept = spec.media ? `${spec.media}/*` : undefined;
  const fileId = `${id}-file`;
  const picker = el("input", { id: fileId, type: "file", class: "file", accept, "aria-describedby": `${id}-upload` });
  const uploadState = el("span", { class: "upload-state", id: `${id}-upload`, role: "status" });
  const preview = el("div", { class: "preview" });
  const urlInput = el("input", {
    id,
    type: "url",
    name: spec.name,
    placeholder: "https://…, data:…, or the URL of an upload",
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": described,
  });
  const drop = el(
    "div",
    { class: "drop" },
    picker,
    el(
      "label",
      { for: fileId, class: "drop-target" },
      el("strong", { text: `Drop ${kind === "image" ? "an" : "a"} ${kind} here` }),
      " or ",
      el("span", { class: "pick", text: "choose a file" }),
    ),
    uploadState,
    preview,
  );

  const showPreview = (src) => {
    preview.replaceChildren();
    if (!src) return;
    const media = kind === "video" ? el("video", { src, muted: true, playsinline: true, preload: "metadata", "aria-label": "The input" }) : kind === "image" ? el("img", { src, alt: "The input" }) : null;
    if (media) preview.append(media);
  };

  const takeFile = (file) => {
    if (!file) return;
    clearError();
    showPreview(URL.createObjectURL(file));
    uploadState.textContent = `Uploading ${file.name}…`;
    urlInput.value = "";
    const upload = uploadFile(file, (fraction) => {
      uploadState.textContent = `Uploading ${file.name}… ${Math.round(fraction * 100)} %`;
    });
    page.uploading = upload;
    const settled = () => {
      if (page.uploading === upload) page.uploading = null;
    };
    upload.then(
      (url) => {
        settled();
        urlInput.value = url;
        uploadState.textContent = `Uploaded ${file.name} (${formatBytes(file.size)})`;
        drop.dataset.uploaded = "true";
      },
      (exc) => {
        settled();
        uploadState.textContent = `The upload of ${file.name} failed`;
        showError(exc);
      },
    );
  };

  picker.addEventListener("change", () => takeFile(picker.files[0]));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    takeFile(event.dataTransfer.files[0]);
  });
  urlInput.addEventListener("change", () => {
    delete drop.dataset.uploaded;
    uploadState.textContent = "";
    const url = urlInput.value.trim();
    // anything else is no URL the browser should load (the server says what is wrong with it)
    showPreview(/^(https?|data|blob):/i.test(url) ? url : null);
  });

  field.control = urlInput;
  field.read = () => urlInput.value.trim() || undefined;
  field.element = el(
    "div",
    { class: "field media" },
    el("span", { class: "label" }, el("code", { text: spec.name }), spec.required ? " (required)" : ""),
    drop,
    el("label", { for: id, class: "sub-label", text: `…or the ${kind}'s URL` }),
    urlInput,
    help,
    error,
  );
  return field;
}

function renderForm(endpoint) {
  page.endpoint = endpoint;
  // the file comes first, whatever the schema's order
  const ordered = [...endpoint.fields].sort((a, b) => (b.kind === "media") - (a.kind === "media"));
  page.fields = ordered.map(buildField);
  $("fields").replaceChildren(...page.fields.map((field) => field.element));
  $("endpoint-help").textContent = `POST ${endpoint.path}, then the status stream, the result and cancel of ${endpoint.appId}`;
}

function readInput() {
  const input = {};
  for (const field of page.fields) {
    const value = field.read();
    if (value !== undefined) input[field.spec.name] = value;
  }
  return input;
}

// ---------------------------------------------------------------- a run

async function submitRun(event) {
  event.preventDefault();
  if (page.run) return;
  clearError();
  const endpoint = page.endpoint;
  const run = { endpoint, input: null, id: null, logs: [], times: { clicked: performance.now() }, metrics: null };
  page.run = run;
  setBusy(true);
  try {
    if (page.uploading) {
      setStatus("Waiting for the upload…");
      await page.uploading;
    }
    run.input = readInput();
    showRunPanel();
    $("run-panel").scrollIntoView({ block: "nearest" }); // on a phone it is below the form
    setStatus("Submitting…");
    const submitted = await requestJson("POST", href(endpoint.path), { json: run.input });
    run.id = submitted.request_id;
    run.times.submitted = performance.now();
    showCode(run);
    onStatus(run, submitted);
    await follow(run);
    const output = await requestJson("GET", href(`queue/${endpoint.appId}/requests/${run.id}`));
    run.times.done = performance.now();
    showResult(run, output);
    setStatus("Done", "done");
  } catch (error) {
    setStatus(`Failed: ${error.message}`, "failed");
    showError(error);
  } finally {
    page.run = null;
    page.lastRun = run;
    setBusy(false);
  }
}

/** Follows the request's status stream (with logs) until COMPLETED, reconnecting if it ends early. */
async function follow(run) {
  const url = href(`queue/${run.endpoint.appId}/requests/${run.id}/status/stream?logs=1`);
  for (;;) {
    const response = await request("GET", url, { accept: "text/event-stream" });
    let fresh = true; // a new stream's first logs are all of them, not the ones since the last event
    for await (const status of serverSentEvents(response)) {
      if (Array.isArray(status.logs)) {
        run.logs = fresh ? status.logs : run.logs.concat(status.logs);
        fresh = false;
      }
      onStatus(run, status);
      if (status.status === "COMPLETED") return status;
    }
    await sleep(500);
  }
}

async function cancelRun() {
  const run = page.run;
  if (!run || !run.id) return;
  $("cancel").disabled = true;
  setStatus("Cancelling…");
  try {
    await request("PUT", href(`queue/${run.endpoint.appId}/requests/${run.id}/cancel`));
  } catch (error) {
    showError(error);
  }
}

const PHASE_LINE = /^([a-z][a-z_]*): /;
const FRACTION = /(\d+)\s*\/\s*(\d+)/;

function onStatus(run, status) {
  if (status.status === "IN_QUEUE") {
    const position = status.queue_position ?? 0;
    setStatus(position === 0 ? "In the queue: next to run" : `In the queue: ${position} ahead`);
  } else if (status.status === "IN_PROGRESS") {
    run.times.started ??= performance.now();
    const last = run.logs[run.logs.length - 1];
    setStatus(last ? `Running: ${last.message}` : "Running…");
    showProgress(run, last ? last.message : "");
  } else if (status.status === "COMPLETED") {
    run.times.completed = performance.now();
    run.metrics = status.metrics || {};
    setStatus(status.error ? `Completed with an error: ${status.error}` : "Completed; fetching the result…");
    $("progress").hidden = true;
  }
  renderLogs(run);
}

/** A `done/total` in the latest log line (frames of a video) drives the bar and the time left. */
function showProgress(run, message) {
  const bar = $("progress");
  const match = message.match(FRACTION);
  if (!match || Number(match[2]) === 0) {
    bar.removeAttribute("value"); // indeterminate
    bar.hidden = false;
    return;
  }
  const fraction = Number(match[1]) / Number(match[2]);
  bar.value = fraction;
  bar.hidden = false;
  const now = performance.now();
  run.firstFraction ??= { at: now, fraction };
  const gained = fraction - run.firstFraction.fraction;
  if (gained > 0 && !/left/.test(message)) {
    const left = ((now - run.firstFraction.at) / gained) * (1 - fraction);
    setStatus(`Running: ${message} (about ${formatSeconds(left / 1000)} left)`);
  }
}

function renderLogs(run) {
  const logs = $("logs");
  logs.textContent = run.logs.map((entry) => `${entry.timestamp}  ${entry.level.padEnd(5)}  ${entry.message}`).join("\n");
  logs.scrollTop = logs.scrollHeight; // the newest line in view
  const phases = phaseNames(run.logs);
  const running = run.times.completed === undefined;
  $("phases").replaceChildren(
    ...phases.map((name, index) => {
      const current = running && index === phases.length - 1;
      return el("li", { class: current ? "current" : "done", "aria-current": current ? "step" : undefined, text: name });
    }),
  );
}

/** The phases in the logs ("<phase>: ..."), in order; repeated lines of one phase (a video's "frames: 8/13 ...")
 * are one phase. */
function phaseNames(logs) {
  const names = [];
  for (const entry of logs) {
    const match = entry.message.match(PHASE_LINE);
    if (match && !["done", "failed"].includes(match[1]) && names[names.length - 1] !== match[1]) names.push(match[1]);
  }
  return names;
}

function setStatus(text, kind = "") {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = kind;
}

function setBusy(busy) {
  $("run").disabled = busy || !page.endpoint;
  $("cancel").hidden = !busy;
  $("cancel").disabled = false;
  $("endpoint").disabled = busy || page.endpoints.size < 2;
}

function showRunPanel() {
  $("run-panel").hidden = false;
  $("result-panel").hidden = true;
  $("phases").replaceChildren();
  $("logs").textContent = "";
  $("progress").hidden = true;
}

// ---------------------------------------------------------------- the result

/** The output's media: the first property that is a file object (`{url, content_type, ...}`). */
function findMedia(output) {
  for (const [key, value] of Object.entries(output || {})) {
    if (value && typeof value === "object" && typeof value.url === "string") return { key, ...value };
  }
  return null;
}

function mediaKind(media) {
  const type = media.content_type || "";
  return MEDIA_KINDS.find((kind) => type.startsWith(`${kind}/`)) || MEDIA_KINDS.find((kind) => media.key === kind) || "file";
}

function showResult(run, output) {
  const media = findMedia(output);
  const viewer = $("viewer");
  viewer.replaceChildren();
  const inputField = page.fields.find((field) => field.spec.kind === "media");
  const before = inputField ? { url: run.input[inputField.spec.name], kind: inputField.spec.media } : null;
  const facts = [];
  if (media) {
    const after = { url: media.url, kind: mediaKind(media), type: media.content_type };
    if (after.kind === "image" && before?.kind === "image") viewer.append(compareImages(before.url, media));
    else if (before && [after.kind, before.kind].includes("video")) {
      viewer.append(sideBySide(before, after, (width, height) => setFact("Size", `${width}×${height}`)));
    } else viewer.append(el("p", {}, el("a", { href: media.url, text: media.file_name || media.url })));
    facts.push(["Size", media.width && media.height ? `${media.width}×${media.height}` : "…"]);
    facts.push(["Format", [media.content_type, media.file_name].filter(Boolean).join(", ")]);
    if (media.file_size != null) facts.push(["File size", formatBytes(media.file_size)]);
    run.outputKey = media.key;
    showCode(run);
    const download = $("download");
    download.href = media.url;
    download.download = media.file_name || "";
  }
  for (const [key, value] of Object.entries(output)) {
    if (media && key === media.key) continue;
    facts.push([key === "seed" ? "Seed" : key, typeof value === "object" ? JSON.stringify(value) : String(value)]);
  }
  facts.push(["Timings", timings(run)]);
  $("facts").replaceChildren(...facts.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { "data-fact": name, text: value })]));
  $("download").hidden = !media;
  $("result-panel").hidden = false;
}

function setFact(name, value) {
  const cell = $("facts").querySelector(`[data-fact="${name}"]`);
  if (cell) cell.textContent = value;
}

function timings(run) {
  const parts = [];
  const inference = run.metrics?.inference_time;
  if (inference != null) parts.push(`inference ${formatSeconds(inference)}`);
  const { clicked, submitted, started, done } = run.times;
  if (started !== undefined && submitted !== undefined) parts.push(`in the queue ${formatSeconds((started - submitted) / 1000)}`);
  if (run.logs.length > 1) {
    const first = Date.parse(run.logs[0].timestamp);
    const last = Date.parse(run.logs[run.logs.length - 1].timestamp);
    parts.push(`running ${formatSeconds((last - first) / 1000)} (first to last log line)`);
  }
  if (done !== undefined) parts.push(`total ${formatSeconds((done - clicked) / 1000)} (from Run to the result)`);
  return parts.join("; ");
}

/** Before (under the clip) and after at the same size; a slider, or a drag, moves the split. */
function compareImages(beforeUrl, media) {
  const after = el("img", { class: "after", src: media.url, alt: "After: the output" });
  const before = el("img", { class: "before", src: beforeUrl, alt: "Before: the input" });
  const stage = el(
    "div",
    { class: "stage", id: "compare-stage" },
    after,
    before,
    el("div", { class: "divider", "aria-hidden": "true" }),
    el("span", { class: "tag tag-before", text: "Before", "aria-hidden": "true" }),
    el("span", { class: "tag tag-after", text: "After", "aria-hidden": "true" }),
  );
  const viewport = el("div", { class: "compare-viewport", tabindex: "0", "aria-label": "Before and after; scroll when zoomed" }, stage);
  const split = el("input", { type: "range", id: "split", min: "0", max: "100", step: "1", value: "50", "aria-label": "Split between before (left) and after (right), in percent" });
  const zoom = el("button", { type: "button", id: "zoom", "aria-pressed": "false", text: "Zoom to 1:1 pixels" });
  const setSplit = (percent) => {
    split.value = String(percent);
    stage.style.setProperty("--split", `${percent}%`);
  };
  const fit = () => {
    const zoomed = zoom.getAttribute("aria-pressed") === "true";
    const { naturalWidth: width, naturalHeight: height } = after;
    if (!width) return;
    // 1:1: one output pixel on one device pixel; fit: the whole image, at most 70 % of the window's height
    stage.style.width = zoomed ? `${width / window.devicePixelRatio}px` : `min(100%, ${(70 * width) / height}vh)`;
  };
  split.addEventListener("input", () => setSplit(Number(split.value)));
  zoom.addEventListener("click", () => {
    const zoomed = zoom.getAttribute("aria-pressed") !== "true";
    zoom.setAttribute("aria-pressed", String(zoomed));
    zoom.textContent = zoomed ? "Fit to the page" : "Zoom to 1:1 pixels";
    fit();
  });
  after.addEventListener("load", fit);
  const dragTo = (event) => {
    const box = stage.getBoundingClientRect();
    setSplit(Math.round(Math.min(1, Math.max(0, (event.clientX - box.left) / box.width)) * 100));
  };
  stage.addEventListener("pointerdown", (event) => {
    stage.setPointerCapture(event.pointerId);
    dragTo(event);
  });
  stage.addEventListener("pointermove", (event) => stage.hasPointerCapture(event.pointerId) && dragTo(event));
  setSplit(50);
  return el("div", { class: "compare" }, viewport, el("div", { class: "compare-controls" }, el("label", { for: "split", text: "Before | After" }), split, zoom));
}

/** Input and output side by side; videos are played, paused and seeked together (the output leads). A GIF
 * output of a video plays by itself; a format this browser cannot play says so (the download still works). */
function sideBySide(before, after, onSize) {
  const show = (side, label) => {
    if (side.kind !== "video") return el("img", { src: side.url, alt: label });
    const video = el("video", { src: side.url, playsinline: true, loop: true, preload: "auto", "aria-label": label });
    video.muted = true; // the attribute alone does not mute a video made by script
    return video;
  };
  const beforeNode = show(before, "Before: the input");
  const afterNode = show(after, "After: the output");
  const videos = [afterNode, beforeNode].filter((node) => node.tagName === "VIDEO");
  const [lead, ...followers] = videos;
  const figure = (node, caption) => el("figure", {}, node, el("figcaption", { text: caption }));
  const afterFigure = figure(afterNode, "After");
  const controls = el("div", { class: "compare-controls" });
  if (afterNode.tagName === "VIDEO") {
    afterNode.addEventListener("loadedmetadata", () => onSize(afterNode.videoWidth, afterNode.videoHeight));
    afterNode.addEventListener("error", () => {
      afterFigure.replaceChildren(
        el("p", { class: "note", text: `This browser cannot play ${after.type || "this video"}: download it to watch it.` }),
        el("figcaption", { text: "After" }),
      );
      controls.hidden = true; // nothing to keep in step: the input gets its own controls
      beforeNode.controls = beforeNode.tagName === "VIDEO";
    });
  } else afterNode.addEventListener("load", () => onSize(afterNode.naturalWidth, afterNode.naturalHeight));
  if (lead) {
    const play = el("button", { type: "button", id: "play", text: videos.length > 1 ? "Play both" : "Play" });
    const seek = el("input", { type: "range", id: "seek", min: "0", max: "0", step: "0.01", value: "0", "aria-label": "Position, in seconds" });
    const clock = el("span", { class: "clock", text: "0.00 s" });
    lead.addEventListener("loadedmetadata", () => (seek.max = String(lead.duration || 0)));
    play.addEventListener("click", () => {
      if (lead.paused) {
        for (const video of followers) video.currentTime = lead.currentTime;
        Promise.all(videos.map((video) => video.play())).catch(showError);
      } else for (const video of videos) video.pause();
    });
    lead.addEventListener("play", () => (play.textContent = videos.length > 1 ? "Pause both" : "Pause"));
    lead.addEventListener("pause", () => (play.textContent = videos.length > 1 ? "Play both" : "Play"));
    seek.addEventListener("input", () => {
      for (const video of videos) video.currentTime = Number(seek.value);
    });
    lead.addEventListener("timeupdate", () => {
      seek.value = String(lead.currentTime);
      clock.textContent = `${lead.currentTime.toFixed(2)} s`;
      // more than two frames apart: move the others to the lead's time
      for (const video of followers) if (Math.abs(video.currentTime - lead.currentTime) > 0.08) video.currentTime = lead.currentTime;
    });
    controls.append(play, seek, clock);
  }
  return el("div", { class: "videos" }, el("div", { class: "side-by-side" }, figure(beforeNode, "Before"), afterFigure), controls);
}

// ---------------------------------------------------------------- client code

const CODE_TABS = [
  ["js", "JavaScript"],
  ["python", "Python"],
  ["curl", "cURL"],
];

function indent(text, spaces) {
  return text.replace(/\n/g, `\n${" ".repeat(spaces)}`);
}

function pythonLiteral(value, depth = 0) {
  const pad = "    ".repeat(depth + 1);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) return `[${value.map((item) => pythonLiteral(item, depth + 1)).join(", ")}]`;
  if (typeof value === "object") {
    const items = Object.entries(value).map(([key, item]) => `${pad}${JSON.stringify(key)}: ${pythonLiteral(item, depth + 1)},`);
    return `{\n${items.join("\n")}\n${"    ".repeat(depth)}}`;
  }
  return JSON.stringify(value);
}

function shellQuote(text) {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

function clientCode(run, language) {
  const base = new URL(".", document.baseURI);
  const root = base.href.replace(/\/$/, "");
  const host = `${base.host}${base.pathname.replace(/\/$/, "")}`;
  const keyed = sessionStorage.getItem(KEY_STORAGE) !== null;
  const id = run.endpoint.id;
  // fal's outputs are named after the input's kind: image_url -> image, video_url -> video
  const mediaKey = run.outputKey || run.endpoint.fields.find((spec) => spec.kind === "media")?.media || "image";
  if (language === "js") {
    return [
      `import { fal } from "@fal-ai/client"; // >= 1.10`,
      ``,
      `// Every request, uploads included, goes to this server${keyed ? "; FAL_KEY in the environment holds your key" : ""}.`,
      `fal.config({ proxyUrl: { url: "${href("api/fal/proxy")}", when: "always" } });`,
      ``,
      `const { data, requestId } = await fal.subscribe("${id}", {`,
      `  input: ${indent(JSON.stringify(run.input, null, 2), 2)},`,
      `  logs: true,`,
      `  onQueueUpdate: (update) => console.log(update.status),`,
      `});`,
      `console.log(data.${mediaKey}.url);`,
    ].join("\n");
  }
  if (language === "python") {
    const secure = base.protocol === "https:";
    return [
      ...(secure
        ? []
        : [`# fal-client speaks https only: start this server with --ssl-certfile and --ssl-keyfile (see the README).`]),
      `import os`,
      ``,
      `# Read when fal_client is imported: set them first.`,
      `os.environ["FAL_RUN_HOST"] = "${host}/run"`,
      `os.environ["FAL_QUEUE_RUN_HOST"] = "${host}/queue"`,
      `os.environ["SSL_CERT_FILE"] = "cert.pem"  # the server's certificate, when it is self-signed`,
      keyed
        ? `os.environ.setdefault("FAL_KEY", "<your key of this server>")`
        : `os.environ.setdefault("FAL_KEY", "anything")  # this server has no keys; fal-client wants one set`,
      ``,
      `import fal_client`,
      ``,
      `result = fal_client.subscribe(`,
      `    "${id}",`,
      `    arguments=${pythonLiteral(run.input, 1)},`,
      `    with_logs=True,`,
      `    on_queue_update=print,`,
      `)`,
      `print(result["${mediaKey}"]["url"])`,
    ].join("\n");
  }
  const auth = keyed ? ` \\\n  -H "Authorization: Key $FAL_KEY"` : "";
  const requests = `${root}/queue/${run.endpoint.appId}/requests/${run.id}`;
  return [
    `# Submit to the queue`,
    `curl -X POST "${root}/queue/${id}" \\`,
    `  -H "Content-Type: application/json"${auth} \\`,
    `  -d ${shellQuote(JSON.stringify(run.input))}`,
    ``,
    `# Its status with the logs (add /stream for server-sent events), then its result`,
    `curl "${requests}/status?logs=1"${auth}`,
    `curl "${requests}"${auth}`,
  ].join("\n");
}

function showCode(run) {
  const tabs = $("code-tabs");
  tabs.replaceChildren(
    ...CODE_TABS.map(([language, name]) =>
      el("button", {
        type: "button",
        role: "tab",
        id: `tab-${language}`,
        "aria-selected": String(language === page.codeTab),
        "aria-controls": "code",
        tabindex: language === page.codeTab ? "0" : "-1",
        text: name,
        onclick: () => {
          page.codeTab = language;
          showCode(run);
          $(`tab-${language}`).focus();
        },
      }),
    ),
  );
  $("code").textContent = clientCode(run, page.codeTab);
  $("copied").textContent = "";
  $("code-panel").hidden = false;
}

/** Arrow keys move between the tabs, as in any tab list. */
function onTabKey(event) {
  const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
  if (!step) return;
  const index = CODE_TABS.findIndex(([language]) => language === page.codeTab);
  const [language] = CODE_TABS[(index + step + CODE_TABS.length) % CODE_TABS.length];
  $(`tab-${language}`).click();
}

async function copyCode() {
  const text = $("code").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // no clipboard API (plain http to another host): copy the selection the old way
    const selection = window.getSelection();
    selection.selectAllChildren($("code"));
    document.execCommand("copy");
    selection.removeAllRanges();
  }
  $("copied").textContent = "Copied";
}

// ---------------------------------------------------------------- formatting

function formatBytes(bytes) {
  const units = ["bytes", "KiB", "MiB", "GiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const exact = unit ? ` (${bytes.toLocaleString("en")} bytes)` : "";
  return `${unit ? value.toFixed(1) : value} ${units[unit]}${exact}`;
}

function formatSeconds(seconds) {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(2)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

// ---------------------------------------------------------------- start

async function watchModel() {
  const line = $("model");
  for (;;) {
    try {
      const response = await fetch(href("readyz"), { headers: { Accept: "application/json" } });
      const body = await response.json();
      if (response.ok) {
        line.textContent = `Model: ${body.model}${body.notice ? ` (${body.notice})` : ""}`;
        line.dataset.state = "ready";
        return;
      }
      line.textContent = body.detail;
      line.dataset.state = body.status;
      if (body.status === "failed") return;
    } catch (error) {
      line.textContent = `The server does not answer: ${error.message}`;
    }
    await sleep(2000);
  }
}

async function start() {
  $("run-form").addEventListener("submit", submitRun);
  $("cancel").addEventListener("click", cancelRun);
  $("copy").addEventListener("click", copyCode);
  $("code-tabs").addEventListener("keydown", onTabKey);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("forget-key").hidden = false;
    answerKeyPrompt(key);
  });
  $("key-dismiss").addEventListener("click", () => answerKeyPrompt(null));
  $("forget-key").hidden = sessionStorage.getItem(KEY_STORAGE) === null;
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("forget-key").hidden = true;
  });
  // a file dropped beside the drop zone must not replace the page
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  watchModel();

  const response = await fetch(href("openapi.json"));
  if (!response.ok) throw new ApiError(response.status, await readDetail(response));
  page.document = await response.json();
  page.endpoints = findEndpoints(page.document);
  const chooser = $("endpoint");
  if (page.endpoints.size === 0) {
    chooser.replaceChildren(el("option", { text: "none" }));
    throw new Error("this server's /openapi.json has no queue endpoint (POST /queue/<owner>/<alias>/<path>)");
  }
  chooser.replaceChildren(...[...page.endpoints.keys()].map((id) => el("option", { value: id, text: id })));
  chooser.addEventListener("change", () => renderForm(page.endpoints.get(chooser.value)));
  renderForm(page.endpoints.get(chooser.value));
  setBusy(false);
  document.body.dataset.ready = "true";
}

start().catch(showError);
