#!/usr/bin/env node
// kafkajs_write.js: writes one event to Kafka the way the Grapevine server
// does (a check of kafkajs_read.js without a server, and of the format).
//
//   node kafkajs_write.js BOOTSTRAP TOPIC [KEY] [TYPE] [ID]
//
// Key = KEY (default "post/1"), value = {"id", "type", "key", "time",
// "source", "schema_version", "payload"} as JSON, headers gv-id and gv-type.
// ID defaults to a new ULID. Prints the event id on stdout; kafkajs logs go
// to stderr (errors only).
'use strict';

const crypto = require('node:crypto');
const { Kafka, Partitioners, logLevel } = require('kafkajs');

const [bootstrap, topic, key = 'post/1', type = 'post.created', givenId] = process.argv.slice(2);
if (!bootstrap || !topic || process.argv.length > 7) {
  process.stderr.write('usage: node kafkajs_write.js BOOTSTRAP TOPIC [KEY] [TYPE] [ID]\n');
  process.exit(2);
}

// A ULID: 48 bits of milliseconds then 80 random bits, Crockford base32.
function ulid(now = Date.now()) {
  const alphabet = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
  let out = '';
  let t = now;
  for (let i = 0; i < 10; i++) {
    out = alphabet[t % 32] + out;
    t = Math.floor(t / 32);
  }
  for (const b of crypto.randomBytes(16)) out += alphabet[b % 32];
  return out;
}

async function main() {
  const kafka = new Kafka({
    clientId: 'grapevine-kafkajs-peer',
    brokers: bootstrap.split(',').map((b) => b.trim()).filter(Boolean),
    logLevel: logLevel.ERROR,
    logCreator: () => ({ level, log }) =>
      process.stderr.write(`kafkajs ${logLevel[level] ?? level}: ${log.message}\n`),
    connectionTimeout: 3000,
  });
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  const now = Date.now();
  const event = {
    id: givenId ?? ulid(now),
    type,
    key,
    time: now,
    source: 'kafkajs-peer',
    schema_version: 1,
    payload: { title: 'hello from kafkajs', tags: ['a', 'b'], n: 1 },
  };
  await producer.connect();
  try {
    await producer.send({
      topic,
      acks: -1,
      messages: [{
        key,
        value: JSON.stringify(event),
        headers: { 'gv-id': event.id, 'gv-type': event.type },
      }],
    });
  } finally {
    await producer.disconnect();
  }
  process.stdout.write(event.id + '\n');
}

main().catch((e) => {
  process.stderr.write(`kafkajs_write: ${e.name ?? 'Error'}: ${e.message}\n`);
  process.exit(1);
});
