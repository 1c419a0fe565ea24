#!/usr/bin/env node
// Starts the Firestore emulator of `@firestore-emulator/server` (pinned in package-lock.json) on
// 127.0.0.1 only, in memory, for tests/firestore_mirror.rs.
//
//   node start.js [PORT]     PORT 0 or absent: a free port chosen by the kernel
//
// Prints exactly one line to stdout once it accepts connections:
//   listening on 127.0.0.1:<port>
// (what FIRESTORE_EMULATOR_HOST should be), then serves until SIGTERM / SIGINT or until its stdin
// closes (so it never outlives the test that started it). Install first with `npm ci` here.
"use strict";

const { FirestoreServer } = require("@firestore-emulator/server");
const { ServerCredentials } = require("@grpc/grpc-js");

const port = Number.parseInt(process.argv[2] ?? "0", 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`bad port ${process.argv[2]}`);
  process.exit(2);
}

const emulator = new FirestoreServer();
// FirestoreServer.start() binds 0.0.0.0; bind its gRPC server to the loopback address instead.
const grpcServer = emulator.server;
grpcServer.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (err, bound) => {
  if (err) {
    console.error(`cannot listen on 127.0.0.1:${port}: ${err.message}`);
    process.exit(1);
  }
  process.stdout.write(`listening on 127.0.0.1:${bound}\n`);
});

const stop = () => {
  grpcServer.forceShutdown();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
process.stdin.on("end", stop);
process.stdin.on("error", stop);
process.stdin.resume();
