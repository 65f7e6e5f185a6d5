// Runs a wasm32-wasip1 test binary under Node.js's WASI: cargo's runner for that target
// (scripts/test.sh sets CARGO_TARGET_WASM32_WASIP1_RUNNER). The filter's core runs its unit
// tests on the target it ships for, with no tool beyond Node.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, env, exit } from "node:process";

const [file, ...args] = argv.slice(2);
const wasi = new WASI({ version: "preview1", args: [file, ...args], env, preopens: { "/": "/" }, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, { wasi_snapshot_preview1: wasi.wasiImport });
// A failing test aborts the binary (wasm has no unwinding): the runner exits non-zero.
exit(wasi.start(instance));
