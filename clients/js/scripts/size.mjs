// Bundle size of the SDK as an app would ship it: dist/index.js bundled and minified by esbuild,
// then gzipped. The goal is at most 10 KB (10240 bytes) min+gzip; exits 1 above it.
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';

const GOAL = 10 * 1024;
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
console.log(`@tidings/client: ${code.length} bytes minified, ${gz} bytes min+gzip (goal <= ${GOAL})`);
if (gz > GOAL) process.exit(1);
