// MQTT.js 5 against a broker: one case per run, printing `OK` as its last line when every
// check passed and exiting non-zero otherwise. Driven by tests/tests/interop/mqttjs.rs.
//
//   node interop.mjs <url> <protocol version 4|5> <case>
//
// <url> is mqtt://host:port (TCP) or ws://host:port/mqtt (WebSocket). Every wait is
// bounded by TIMEOUT_MS, so a broker that never answers fails the case rather than hangs.

import mqtt from "mqtt";

const [url, versionArg, caseName] = process.argv.slice(2);
const protocolVersion = Number(versionArg);
if (!url || ![4, 5].includes(protocolVersion) || !caseName) {
  console.error("usage: node interop.mjs <url> <4|5> <case>");
  process.exit(2);
}
const V5 = protocolVersion === 5;
const TIMEOUT_MS = 15_000;
// Names unique per run, so cases sharing a broker cannot see each other's messages.
const tag = `${caseName}-${protocolVersion}-${url.startsWith("ws") ? "ws" : "tcp"}`;

function fail(msg) {
  throw new Error(msg);
}

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A connected client. Any DISCONNECT from the broker or client error is recorded in
 * `client.problems`, so a case can report the broker's reason code. */
async function connect(clientId, extra = {}) {
  const client = await withTimeout(
    mqtt.connectAsync(url, {
      clientId,
      protocolVersion,
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: TIMEOUT_MS,
      keepalive: 30,
      ...extra,
    }),
    `${clientId}: CONNACK`,
  );
  client.problems = [];
  client.on("disconnect", (packet) => {
    const code = packet.reasonCode ?? 0;
    client.problems.push(`DISCONNECT 0x${code.toString(16).padStart(2, "0")} from the broker`);
  });
  client.on("error", (e) => client.problems.push(`error: ${e.message}`));
  return client;
}

async function subscribe(client, filter, qos) {
  const granted = await withTimeout(client.subscribeAsync(filter, { qos }), `SUBACK ${filter}`);
  if (granted.length !== 1 || granted[0].qos !== qos) {
    fail(`SUBACK for ${filter} at QoS ${qos}: ${JSON.stringify(granted)}`);
  }
}

/** Collects messages on `client`; `wait(n)` resolves once `n` have arrived. */
function collector(client) {
  const got = [];
  let waiter = null;
  client.on("message", (topic, payload, packet) => {
    got.push({ topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain,
      properties: packet.properties });
    if (waiter && got.length >= waiter.n) {
      waiter.resolve();
      waiter = null;
    }
  });
  return {
    got,
    wait(n) {
      if (got.length >= n) return Promise.resolve();
      return withTimeout(
        new Promise((resolve) => {
          waiter = { n, resolve };
        }),
        `${n} messages (got ${got.length})`,
      ).catch((e) => fail(`${e.message}; received ${got.length}`));
    },
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function end(...clients) {
  for (const c of clients) {
    await withTimeout(c.endAsync(), "end");
  }
}

function checkNoProblems(...clients) {
  for (const c of clients) {
    if (c.problems.length) fail(`${c.options.clientId}: ${c.problems.join("; ")}`);
  }
}

const cases = {
  /** QoS 0, 1 and 2 round trips through a `+` subscription at QoS 2 (5.0: a user
   * property travels with each message). */
  async pubsub() {
    const sub = await connect(`js-sub-${tag}`);
    const inbox = collector(sub);
    await subscribe(sub, `js/${tag}/+`, 2);
    const pub = await connect(`js-pub-${tag}`);
    for (const qos of [0, 1, 2]) {
      const opts = { qos };
      if (V5) opts.properties = { userProperties: { k: `v${qos}` } };
      await withTimeout(pub.publishAsync(`js/${tag}/${qos}`, `m${qos}`, opts), `publish QoS ${qos}`);
    }
    await inbox.wait(3);
    inbox.got.forEach((m, qos) => {
      if (m.topic !== `js/${tag}/${qos}` || m.payload !== `m${qos}` || m.qos !== qos) {
        fail(`message ${qos}: ${JSON.stringify(m)}`);
      }
      if (V5 && m.properties?.userProperties?.k !== `v${qos}`) {
        fail(`message ${qos} lost its user property: ${JSON.stringify(m.properties)}`);
      }
    });
    checkNoProblems(pub, sub);
    await end(pub, sub);
  },

  /** A retained message reaches a later subscriber with the retain flag; an empty one
   * clears it [MQTT-3.3.1-6] [MQTT-3.3.1-9]. */
  async retained() {
    const topic = `js/${tag}/retained`;
    const pub = await connect(`js-pub-${tag}`);
    await withTimeout(pub.publishAsync(topic, "kept", { qos: 1, retain: true }), "publish retained");
    const sub = await connect(`js-sub-${tag}`);
    const inbox = collector(sub);
    await subscribe(sub, topic, 1);
    await inbox.wait(1);
    const [m] = inbox.got;
    if (m.payload !== "kept" || !m.retain || m.qos !== 1) fail(`retained: ${JSON.stringify(m)}`);
    await withTimeout(pub.publishAsync(topic, "", { qos: 1, retain: true }), "clear retained");
    const late = await connect(`js-late-${tag}`);
    const lateInbox = collector(late);
    await subscribe(late, topic, 1);
    await sleep(300);
    if (lateInbox.got.length) fail(`cleared retained still sent: ${JSON.stringify(lateInbox.got)}`);
    checkNoProblems(pub, sub, late);
    await end(pub, sub, late);
  },

  /** The will goes out when the connection drops without DISCONNECT [MQTT-3.1.2-8]. */
  async will() {
    const topic = `js/${tag}/will`;
    const sub = await connect(`js-sub-${tag}`);
    const inbox = collector(sub);
    await subscribe(sub, topic, 1);
    const dying = await connect(`js-dying-${tag}`, {
      will: { topic, payload: Buffer.from("gone"), qos: 1, retain: false },
    });
    // Cut the transport under the client: no DISCONNECT is sent.
    dying.stream.destroy();
    await inbox.wait(1);
    const [m] = inbox.got;
    if (m.topic !== topic || m.payload !== "gone" || m.qos !== 1) fail(`will: ${JSON.stringify(m)}`);
    dying.end(true);
    checkNoProblems(sub);
    await end(sub);
  },

  /** 200 QoS 1 messages published at once, without waiting for acknowledgements. */
  async burst1() {
    await burst(1);
  },

  /** 200 QoS 2 messages published at once. */
  async burst2() {
    await burst(2);
  },
};

/** A publisher fires N messages without waiting. MQTT.js does not hold back for the
 * broker's Receive Maximum (64), so over 5.0 this is where a broker that enforces it without
 * flow control answers DISCONNECT 0x93. What a broker must do instead, as mosquitto does:
 * acknowledge every QoS 1 message, and answer a QoS 2 message beyond the quota with PUBREC
 * 0x97 (Quota exceeded; its PUBRELs are behind the burst in the stream, so it cannot wait for
 * them). Every accepted message arrives once, in order; a refused one never does. */
async function burst(qos) {
  const N = 200;
  const topic = `js/${tag}/burst`;
  const sub = await connect(`js-sub-${tag}`);
  const inbox = collector(sub);
  await subscribe(sub, topic, qos);
  const pub = await connect(`js-pub-${tag}`);
  const acks = [];
  for (let i = 0; i < N; i++) {
    acks.push(pub.publishAsync(topic, String(i), { qos }));
  }
  // A closed connection ends the wait at once: MQTT.js keeps unacknowledged QoS 1/2
  // publishes pending across a close rather than rejecting them.
  const closed = new Promise((_, reject) => {
    pub.once("close", () => reject(new Error("the connection closed")));
  });
  const settled = await withTimeout(
    Promise.race([Promise.allSettled(acks), closed]),
    `${N} acknowledgements`,
  ).catch((e) => fail(`${e.message}; broker said: ${pub.problems.join("; ") || "nothing"}`));
  const refused = settled.filter((s) => s.status === "rejected");
  const overQuota = (s) => /Quota exceeded/.test(s.reason?.message ?? "");
  const allowed = V5 && qos === 2 ? refused.filter(overQuota).length : 0;
  if (refused.length !== allowed || pub.problems.length) {
    fail(
      `${refused.length} of ${N} QoS ${qos} publishes failed` +
        (refused.length ? ` (first: ${refused[0].reason?.message})` : "") +
        `; broker said: ${pub.problems.join("; ") || "nothing"}`,
    );
  }
  const want = [];
  settled.forEach((s, i) => {
    if (s.status === "fulfilled") want.push(String(i));
  });
  // At least the broker's Receive Maximum of them is taken.
  if (want.length < Math.min(N, 64)) fail(`only ${want.length} of ${N} accepted`);
  await inbox.wait(want.length);
  await sleep(200); // anything beyond would be a duplicate or a refused message
  const payloads = inbox.got.map((m) => m.payload);
  if (JSON.stringify(payloads) !== JSON.stringify(want)) {
    fail(`received out of order or duplicated: ${payloads.join(",")}`);
  }
  if (inbox.got.some((m) => m.qos !== qos)) fail(`delivered at the wrong QoS`);
  checkNoProblems(pub, sub);
  await end(pub, sub);
}

const run = cases[caseName];
if (!run) {
  console.error(`unknown case ${caseName}; cases: ${Object.keys(cases).join(", ")}`);
  process.exit(2);
}
try {
  await run();
  console.log("OK");
  process.exit(0);
} catch (e) {
  console.error(`FAIL ${tag}: ${e.message}`);
  process.exit(1);
}
