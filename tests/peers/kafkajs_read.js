#!/usr/bin/env node
// kafkajs_read.js: reads one Grapevine event from Kafka with kafkajs (a
// Kafka client that is not librdkafka), to show that what the server
// writes can be read by other clients.
//
//   node kafkajs_read.js BOOTSTRAP TOPIC EVENT_ID [TIMEOUT_MS]
//
// Reads TOPIC from the beginning (a consumer in a new, random group) until
// it finds the message whose value's "id" (or "gv-id" header) is EVENT_ID,
// prints one line of JSON to stdout and exits 0:
//   {"key": "...", "headers": {"gv-id": "...", ...}, "value": {...},
//    "partition": N, "offset": "N"}
// Exits 1 (message on stderr) if it is not found within TIMEOUT_MS
// (default 20000), 2 on bad usage. kafkajs logs go to stderr (errors only).
'use strict';

const crypto = require('node:crypto');
const { Kafka, logLevel } = require('kafkajs');

const USAGE = 'usage: node kafkajs_read.js BOOTSTRAP TOPIC EVENT_ID [TIMEOUT_MS]\n';

function fail(code, message) {
  process.stderr.write(`kafkajs_read: ${message}\n`);
  process.exit(code);
}

const [bootstrap, topic, eventId, timeoutArg] = process.argv.slice(2);
if (!bootstrap || !topic || !eventId || process.argv.length > 6) {
  process.stderr.write(USAGE);
  process.exit(2);
}
const timeoutMs = timeoutArg === undefined ? 20000 : Number(timeoutArg);
if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) fail(2, `bad TIMEOUT_MS ${timeoutArg}\n${USAGE.trimEnd()}`);

// kafkajs's default logger writes some levels to stdout; ours writes to stderr.
const stderrLogger = () => ({ level, log }) => {
  const where = log.broker ? ` (broker ${log.broker})` : '';
  process.stderr.write(`kafkajs ${logLevel[level] ?? level}: ${log.message}${where}\n`);
};

const kafka = new Kafka({
  clientId: 'grapevine-kafkajs-peer',
  brokers: bootstrap.split(',').map((b) => b.trim()).filter(Boolean),
  logLevel: logLevel.ERROR,
  logCreator: stderrLogger,
  connectionTimeout: 3000,
  retry: { retries: 10, initialRetryTime: 100, maxRetryTime: 1000 },
});

const consumer = kafka.consumer({
  groupId: `grapevine-peer-${crypto.randomUUID()}`,
  // A new group's first join takes the broker's initial rebalance delay
  // (3 s, fixed, in librdkafka's mock cluster; group.initial.rebalance.delay.ms
  // on a real broker); no client setting shortens it. These keep the rest short.
  sessionTimeout: 6000,
  rebalanceTimeout: 6000,
  heartbeatInterval: 1000,
  maxWaitTimeInMs: 250, // fetch long-poll: find new messages soon
  retry: { retries: 10, initialRetryTime: 100, maxRetryTime: 1000 },
});

function text(v) {
  if (v === null || v === undefined) return null;
  return Buffer.isBuffer(v) ? v.toString('utf8') : String(v);
}

// Header values as strings (a repeated header: its last value).
function headersOf(message) {
  const out = {};
  for (const [name, v] of Object.entries(message.headers ?? {})) {
    out[name] = Array.isArray(v) ? text(v[v.length - 1]) : text(v);
  }
  return out;
}

let finished = false;

async function finish(code, line, error) {
  if (finished) return;
  finished = true;
  clearTimeout(timer);
  if (line !== undefined) process.stdout.write(line + '\n');
  if (error !== undefined) process.stderr.write(`kafkajs_read: ${error}\n`);
  // Leave the group, but never wait long for it.
  const grace = new Promise((resolve) => setTimeout(resolve, 2000).unref());
  await Promise.race([consumer.disconnect().catch(() => {}), grace]);
  process.exit(code);
}

const timer = setTimeout(() => {
  finish(1, undefined, `event ${eventId} not found in topic ${topic} within ${timeoutMs} ms`);
}, timeoutMs);

// A crash kafkajs will not restart from (e.g. a batch compressed with
// snappy, lz4 or zstd: kafkajs itself reads only gzip) ends the wait now.
consumer.on(consumer.events.CRASH, ({ payload }) => {
  if (!payload.restart) {
    finish(1, undefined, `kafkajs consumer stopped: ${payload.error?.name}: ${payload.error?.message}`);
  }
});

async function main() {
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      if (finished) return;
      const headers = headersOf(message);
      let value = null;
      try {
        value = JSON.parse(text(message.value));
      } catch {
        value = null; // not JSON: not one of ours
      }
      const id = value && typeof value === 'object' ? value.id : undefined;
      if (id !== eventId && headers['gv-id'] !== eventId) return;
      const line = JSON.stringify({
        key: text(message.key),
        headers,
        value,
        partition,
        offset: message.offset,
      });
      // Not awaited: disconnect waits for this handler to return.
      finish(0, line);
    },
  });
}

main().catch((e) => finish(1, undefined, `${e.name ?? 'Error'}: ${e.message}`));
