import { runMain } from './action.js';

await runMain();
// Dangling HTTP handles (the cache client) would keep Node alive.
process.exit();
