// Load the service's API documentation pages (/docs: Swagger UI, /redoc: ReDoc) in headless Chromium and
// print as JSON what each rendered and whether anything outside the server was requested.
// Usage: node tools/browser/check_docs.js BASE_URL   (SCREENSHOT_DIR=dir saves docs.png and redoc.png)
// Output: {"/docs": {"operations", "externalRequests", "consoleErrors", "failedRequests"}, "/redoc": {...}}
"use strict";

const { chromium } = require("playwright-core");

const CHROMIUM_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-dev-shm-usage",
];

// What counts as "rendered": the operations each page lists, found by its own markup.
const PAGES = {
  "/docs": { ready: ".opblock", count: () => document.querySelectorAll(".opblock").length },
  "/redoc": {
    ready: "[data-section-id^='tag/'], [data-section-id^='operation/']",
    count: () => document.querySelectorAll("[data-section-id^='operation/']").length,
  },
};

async function main() {
  const [base] = process.argv.slice(2);
  if (!base) throw new Error("usage: node check_docs.js BASE_URL");
  const origin = new URL(base).origin;
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
  const result = {};
  try {
    for (const [path, spec] of Object.entries(PAGES)) {
      const entry = { operations: 0, externalRequests: [], consoleErrors: [], failedRequests: [] };
      const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
      await page.route("**/*", (route) => {
        const target = route.request().url();
        if (target.startsWith(origin)) return route.continue();
        entry.externalRequests.push(target);
        return route.abort();
      });
      page.on("console", (message) => {
        if (message.type() === "error") entry.consoleErrors.push(message.text());
      });
      page.on("response", (response) => {
        if (response.status() >= 400) entry.failedRequests.push(`${response.status()} ${response.url()}`);
      });
      await page.goto(origin + path, { waitUntil: "load" });
      await page.waitForSelector(spec.ready, { timeout: 60000 });
      entry.operations = await page.evaluate(spec.count);
      if (process.env.SCREENSHOT_DIR) {
        await page.screenshot({ path: `${process.env.SCREENSHOT_DIR}/${path.slice(1)}.png` });
      }
      await page.close();
      result[path] = entry;
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(result));
}

main().catch((error) => {
  process.stderr.write(`check_docs failed: ${error && error.stack ? error.stack : error}\n`);
  process.exit(2);
});
