// Bundle size of the SDK as an app would ship it: dist/index.js bundled and minified by esbuild,
// then gzipped. The goal is at most 10 KB (10240 bytes) min+gzip; exits 1 above it.
//
//   node scripts/size.mjs            (npm run size: the check `npm test` runs)
//   node scripts/size.mjs --json     the figures as one JSON line for bench/run, which reports
//                                    the goal itself: exits 0 above it
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';

const GOAL = 10 * 1024;
const json = process.argv.includes('--json');
const out = await build({
  entryPoints: [new URL('../dist/index.js', import.meta.url).pathname],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2020',
  write: false,
});
const code = out.outputFiles[0].contents;
const gz = gzipSync(code, { level: 9 }).length;
const line = `@tidings/client: ${code.length} bytes minified, ${gz} bytes min+gzip (goal <= ${GOAL})`;
if (json) {
  console.error(line);
  console.log(JSON.stringify({
    scenario: 'sdk-js-bundle',
    system: 'js-sdk',
    minified_bytes: code.length,
    gzip_bytes: gz,
    goal_bytes: GOAL,
    ok: true,
    problems: [],
  }));
} else {
  console.log(line);
  if (gz > GOAL) process.exit(1);
}
