// Validate one glTF/GLB asset with the Khronos glTF validator and print its report as JSON.
// Usage: node tools/validate.js < asset.glb   (the asset is read from stdin so callers need no temp file)
"use strict";

const validator = require("gltf-validator");

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on("data", (chunk) => chunks.push(chunk));
    process.stdin.on("end", () => resolve(Buffer.concat(chunks)));
    process.stdin.on("error", reject);
  });
}

async function main() {
  const data = await readStdin();
  // maxIssues 0 means "no limit": callers want every message when a check fails.
  const report = await validator.validateBytes(new Uint8Array(data), { maxIssues: 0 });
  process.stdout.write(JSON.stringify(report));
}

main().catch((error) => {
  // A rejected promise means the input could not be parsed as glTF/GLB at all.
  process.stderr.write(`gltf-validator failed: ${error}\n`);
  process.exit(2);
});
