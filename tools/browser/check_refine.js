// Drive the viewer's Refine button in headless Chromium (software WebGL) and print what happened as JSON.
// Usage: node tools/browser/check_refine.js URL [PROMPT]
//   1. open the page and wait for the mesh of its default prompt;
//   2. generate PROMPT (one the model does not know: its note offers a Refine button);
//   3. choose 16 steps and press the note's Refine button: the progress bar must move, previews may replace
//      the mesh while the job runs, and the refined mesh must replace them when the job has succeeded.
//   CHROMIUM=/path/to/chromium overrides the browser; SCREENSHOT=file.png saves the page at the end,
//   NOTE_SCREENSHOT=file.png after step 2.
// Output: {"loads", "loadsBeforeRefine", "noteShown", "progressSeen": [values], "finalProgress", "status",
//          "refineRequests": [{"url", "status"}], "viewerErrors", "consoleErrors", "nonBackgroundFraction"}
"use strict";

const { chromium } = require("playwright-core");

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
  if (!url) throw new Error("usage: node check_refine.js URL [PROMPT]");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
  const result = { consoleErrors: [], refineRequests: [], progressSeen: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 960, height: 640 } });
    page.on("console", (message) => {
      if (message.type() === "error") result.consoleErrors.push(message.text());
    });
    page.on("response", (response) => {
      const target = response.url();
      if (target.includes("/v1/refine") || /\/v1\/jobs\/[^/]+\/(result|preview)$/.test(target)) {
        result.refineRequests.push({ url: new URL(target).pathname, status: response.status() });
      }
    });
    await page.goto(url, { waitUntil: "load" });
    await page.waitForFunction(() => window.att3dViewer.loads >= 1, null, { timeout: 90000 });
    await page.fill("#prompt", prompt);
    await page.click("#generate");
    await page.waitForFunction(() => window.att3dViewer.loads >= 2, null, { timeout: 90000 });
    result.loadsBeforeRefine = await page.evaluate(() => window.att3dViewer.loads);
    result.noteShown = await page.isVisible("#refine-note");
    if (process.env.NOTE_SCREENSHOT) await page.screenshot({ path: process.env.NOTE_SCREENSHOT });
    await page.selectOption("#refine-steps", "16");
    await page.click(result.noteShown ? "#refine-note" : "#refine");
    // Sample the progress bar until the refine ends (the button is enabled again).
    const deadline = Date.now() + 240000;
    for (;;) {
      const state = await page.evaluate(() => ({
        value: Number(document.getElementById("refine-progress").value),
        busy: document.getElementById("refine").disabled,
      }));
      if (!result.progressSeen.includes(state.value)) result.progressSeen.push(state.value);
      if (!state.busy && result.progressSeen.length > 1) break;
      if (Date.now() > deadline) throw new Error("the refine did not finish in time");
      await page.waitForTimeout(200);
    }
    await page.waitForFunction((k) => window.att3dViewer.loads > k, result.loadsBeforeRefine, {
      timeout: 30000,
    });
    for (let i = 0; i < 10; i += 1) await page.evaluate(() => new Promise((r) => requestAnimationFrame(r)));
    result.nonBackgroundFraction = await page.evaluate(async () => {
      const image = new Image();
      image.src = document.getElementById("viewer").toDataURL("image/png");
      await image.decode();
      const canvas = document.createElement("canvas");
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
      const context = canvas.getContext("2d");
      context.drawImage(image, 0, 0);
      const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
      let differing = 0;
      for (let i = 0; i < data.length; i += 4) {
        const d = Math.max(...[0, 1, 2].map((c) => Math.abs(data[i + c] - data[c])));
        if (d > 24) differing += 1;
      }
      return differing / (data.length / 4);
    });
    result.loads = await page.evaluate(() => window.att3dViewer.loads);
    result.viewerErrors = await page.evaluate(() => window.att3dViewer.errors);
    result.finalProgress = await page.evaluate(() => Number(document.getElementById("refine-progress").value));
    result.status = await page.textContent("#status");
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(result));
}

main().catch((error) => {
  process.stderr.write(`check_refine failed: ${error && error.stack ? error.stack : error}\n`);
  process.exit(2);
});
