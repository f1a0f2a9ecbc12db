/**
 * Imported first by bench/ident-server.ts. Under `node --jitless` there is no
 * WebAssembly, and dockerode's dependency ssh2 (only used for ssh:// Docker
 * hosts) rejects a promise at load time while compiling its poly1305 wasm
 * module; that rejection would end the process. The benchmark ignores exactly
 * that rejection so it can measure the query path. The daemon itself does not
 * do this, which is one reason the unit keeps the JIT (see systemd/docker-identd.service).
 */
process.on('unhandledRejection', (err) => {
  if (process.execArgv.includes('--jitless') && /WebAssembly/.test(String((err as Error)?.message ?? err))) return;
  throw err;
});
