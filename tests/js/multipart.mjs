// A file large enough that the official @fal-ai/client uploads it in parts (over its 90 MiB threshold, in
// 10 MiB parts), through the proxy like flows.mjs; then read back from the URL it returned.
// Run by tests/server/test_js_client.py with PROXY_URL and UPLOAD_MIB set; prints one JSON summary line.
import { createHash } from "node:crypto";
import { fal } from "@fal-ai/client";

fal.config({ proxyUrl: { url: process.env.PROXY_URL, when: "always" } });

// Every MiB holds its own index, so parts stored out of order, twice or not at all change the bytes.
const size = Number(process.env.UPLOAD_MIB) * 1024 * 1024 + 12345; // a last part shorter than the others
const bytes = new Uint8Array(size);
for (let i = 0; i < size; i++) bytes[i] = (i * 31 + (i >> 20)) & 255;
const file = new File([bytes], "big.bin", { type: "application/octet-stream" });

const url = await fal.storage.upload(file);
const response = await fetch(url);
const served = new Uint8Array(await response.arrayBuffer());
const digest = (data) => createHash("sha256").update(data).digest("hex");
console.log(JSON.stringify({ url, status: response.status, size, servedSize: served.length,
                             sha256: digest(bytes), servedSha256: digest(served) }));
