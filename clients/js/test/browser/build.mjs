// Bundles page.mjs (React, react-dom and the client) into out/page.js for the browser test.
import { build } from "esbuild";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
await build({
  entryPoints: [join(here, "page.mjs")],
  bundle: true,
  format: "iife",
  outfile: join(here, "out", "page.js"),
  define: { "process.env.NODE_ENV": '"production"' },
  logLevel: "warning",
});
