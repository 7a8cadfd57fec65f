// Build the explorer's front end with esbuild (deterministic: same sources, same bytes).
//
//   node build.mjs [--out DIR]   bundle + minify src/main.ts -> DIR/app.js, src/styles.css -> DIR/app.css,
//                                copy src/index.html -> DIR/index.html (DIR: ../src/contrastlens/server/static)
//   node build.mjs --test        bundle test/*.test.ts for Node and run them with `node --test`
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);

if (args.includes("--test")) {
  const out = join(here, "node_modules", ".cache", "contrastlens-tests");
  rmSync(out, { recursive: true, force: true });
  const tests = readdirSync(join(here, "test")).filter((f) => f.endsWith(".test.ts")).sort();
  await esbuild.build({
    entryPoints: tests.map((f) => join(here, "test", f)),
    outdir: out, bundle: true, platform: "node", format: "esm", target: "node18", outExtension: { ".js": ".mjs" },
    logLevel: "warning",
  });
  const files = tests.map((f) => join(out, f.replace(/\.ts$/, ".mjs")));
  const r = spawnSync(process.execPath, ["--test", ...files], { stdio: "inherit" });
  process.exit(r.status ?? 1);
}

const oi = args.indexOf("--out");
const outdir = resolve(oi >= 0 ? args[oi + 1] : join(here, "..", "src", "contrastlens", "server", "static"));
mkdirSync(outdir, { recursive: true });
const common = { bundle: true, minify: true, sourcemap: false, legalComments: "none", logLevel: "warning",
  charset: "utf8" };
await esbuild.build({ ...common, entryPoints: [join(here, "src", "main.ts")], outfile: join(outdir, "app.js"),
  format: "iife", target: "es2020", platform: "browser" });
await esbuild.build({ ...common, entryPoints: [join(here, "src", "styles.css")], outfile: join(outdir, "app.css") });
copyFileSync(join(here, "src", "index.html"), join(outdir, "index.html"));
console.log(`built ${outdir}/{index.html,app.js,app.css}`);
