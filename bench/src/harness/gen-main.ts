import { generatorMain } from './generator.js';

/* A load-generator process: `node bench/dist/harness/gen-main.js --control nats://HOST:PORT [--run ID]` (what `gravitas bench generator` runs). */
process.exitCode = await generatorMain(process.argv.slice(2));
