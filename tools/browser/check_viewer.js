// Drive the att3d viewer page in headless Chromium (software WebGL) and print what happened as JSON.
// Usage: node tools/browser/check_viewer.js URL [PROMPT]
//   1. open the page and wait, without touching it, for the mesh of its default prompt (no empty pane);
//   2. generate PROMPT; measure the drawn image;
//   3. move the blend slider to 0.25 (a real interpolation), then to 0.75 with the server's answer replaced
//      by a 503: the slider must come back to the blend that is shown, and the error must be shown.
//   CHROMIUM=/path/to/chromium overrides the browser (default: Debian's /usr/bin/chromium);
//   SCREENSHOT=file.png saves a screenshot of the page at the end; FIRST_SCREENSHOT=file.png after step 1.
// Output: {"loads", "firstLoad": {"loads", "prompt", "status"}, "viewerErrors", "consoleErrors",
//          "externalRequests", "failedRequests", "image": {"width", "height", "nonBackgroundFraction",
//          "distinctColours"}, "meshResponses": [{"url", "status", "contentType"}],
//          "blend": {"shown", "afterFailure": {"slider", "label", "status", "isError"}}}
"use strict";

const { chromium } = require("playwright-core");

// SwiftShader gives WebGL without a GPU; the rest keeps Chromium from reaching the network on its own.
const CHROMIUM_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--use-gl=angle",
  "--use-angle=swiftshader",
  "--enable-unsafe-swiftshader",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-dev-shm-usage",
];

async function main() {
  const [url, prompt = "a red cube"] = process.argv.slice(2);
  if (!url) throw new Error("usage: node check_viewer.js URL [PROMPT]");
  const origin = new URL(url).origin;
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
  const result = {
    loads: 0,
    viewerErrors: [],
    consoleErrors: [],
    externalRequests: [],
    failedRequests: [],
    meshResponses: [],
  };
  let failing = null; // the URL whose answer step 3 replaces with a 503 (its console error is expected)
  try {
    const page = await browser.newPage({ viewport: { width: 960, height: 640 } });
    // The page must be self-contained: anything outside the server is recorded and refused.
    await page.route("**/*", (route) => {
      const target = route.request().url();
      if (target.startsWith(origin)) return route.continue();
      result.externalRequests.push(target);
      return route.abort();
    });
    page.on("console", (message) => {
      if (message.type() !== "error") return;
      if (failing && (message.location().url || "") === failing) return;
      result.consoleErrors.push(message.text());
    });
    page.on("response", (response) => {
      // Anything else the page loads (scripts, favicon) must be there.
      if (response.status() >= 400 && !response.url().includes("/v1/")) {
        result.failedRequests.push(`${response.status()} ${response.url()}`);
      }
      if (response.url().includes("/v1/")) {
        result.meshResponses.push({
          url: response.url(),
          status: response.status(),
          contentType: response.headers()["content-type"] || "",
        });
      }
    });

    const loadsAtLeast = (n) =>
      page.waitForFunction(
        (k) => window.att3dViewer.loads >= k || window.att3dViewer.errors.length > 0,
        n,
        { timeout: 90000 },
      );
    await page.goto(url, { waitUntil: "load" });
    await page.waitForFunction(() => customElements.get("model-viewer") !== undefined, null, { timeout: 30000 });
    // 1. Nobody clicks: the page shows the mesh of its default prompt by itself.
    await loadsAtLeast(1);
    result.firstLoad = {
      loads: await page.evaluate(() => window.att3dViewer.loads),
      prompt: await page.inputValue("#prompt"),
      status: await page.textContent("#status"),
    };
    if (process.env.FIRST_SCREENSHOT) await page.screenshot({ path: process.env.FIRST_SCREENSHOT });
    // 2. Generate the given prompt.
    await page.fill("#prompt", prompt);
    await page.click("#generate");
    await loadsAtLeast(2);
    // Let a few frames render, then read the viewer's own snapshot of its canvas.
    result.image = await page.evaluate(async () => {
      const viewer = document.getElementById("viewer");
      for (let i = 0; i < 10; i += 1) await new Promise((resolve) => requestAnimationFrame(resolve));
      const image = new Image();
      image.src = viewer.toDataURL("image/png");
      await image.decode();
      const canvas = document.createElement("canvas");
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
      const context = canvas.getContext("2d");
      context.drawImage(image, 0, 0);
      const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
      // Background: the top-left pixel. A pixel "differs" when any channel is more than 24 levels away.
      const background = [data[0], data[1], data[2]];
      let differing = 0;
      const colours = new Set();
      for (let i = 0; i < data.length; i += 4) {
        const d = Math.max(
          Math.abs(data[i] - background[0]),
          Math.abs(data[i + 1] - background[1]),
          Math.abs(data[i + 2] - background[2]),
        );
        if (d > 24) differing += 1;
        colours.add((data[i] >> 4) * 256 + (data[i + 1] >> 4) * 16 + (data[i + 2] >> 4));
      }
      return {
        width: canvas.width,
        height: canvas.height,
        nonBackgroundFraction: differing / (data.length / 4),
        distinctColours: colours.size,
      };
    });

    // 3. The blend slider: a shown blend, then a failed request that must not leave the slider elsewhere.
    const slide = (value) =>
      page.evaluate((v) => {
        const alpha = document.getElementById("alpha");
        alpha.value = v;
        alpha.dispatchEvent(new Event("input"));
        alpha.dispatchEvent(new Event("change"));
      }, value);
    await slide("0.25");
    await loadsAtLeast(3);
    await page.waitForFunction(() => !document.getElementById("status").textContent.startsWith("Generating"));
    result.blend = { shown: await page.inputValue("#alpha") };
    failing = `${origin}/v1/interpolate`;
    await page.route(failing, (route) =>
      route.fulfill({
        status: 503,
        contentType: "application/json",
        headers: { "Retry-After": "5" },
        body: JSON.stringify({ error: "not_ready", message: "not ready: test outage", fields: [] }),
      }),
    );
    await slide("0.75");
    await page.waitForFunction(() => document.getElementById("status").classList.contains("error"), null, {
      timeout: 30000,
    });
    result.blend.afterFailure = {
      slider: await page.inputValue("#alpha"),
      label: await page.textContent("#alpha-value"),
      status: await page.textContent("#status"),
      isError: true,
    };
    result.loads = await page.evaluate(() => window.att3dViewer.loads);
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(result));
}

main().catch((error) => {
  process.stderr.write(`check_viewer failed: ${error && error.stack ? error.stack : error}\n`);
  process.exit(2);
});
