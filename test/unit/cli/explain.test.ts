/** Rendering explain's result (src/cli/explain.ts): numbered steps from the report's data, and JSON. */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { explainJson, formatExplain } from '../../../src/cli/explain';
import type { ContainerReport, ExplainReport } from '../../../src/resolve/explain';

const web: ContainerReport = {
  id: '3f2a1b9c0d1e4f5a6b7c8d9e',
  name: 'shop-web-1',
  networks: [
    { name: 'shop_default', ipv4: '172.18.0.3', ipv6: 'fd00:214::3' },
    { name: 'bridge', ipv4: '172.17.0.3' },
  ],
  labels: { 'com.docker.compose.project': 'shop', 'com.docker.compose.service': 'web' },
};

/** A found container's report; `over` replaces parts of it. */
function report(over: Partial<ExplainReport> = {}): ExplainReport {
  return {
    query: { portOnServer: 40001, portOnClient: 3128, querier: '10.213.0.2', local: '10.213.0.1', localFrom: 'given' },
    tuple: { family: 4, src: '10.213.0.2', sport: 3128, dst: '10.213.0.1', dport: 40001 },
    conntrack: {
      source: 'netlink',
      openMs: 2,
      lookupUs: 61,
      result: 'found',
      entry: {
        protocol: 'tcp',
        state: 'ESTABLISHED',
        status: ['ASSURED', 'SRC_NAT'],
        orig: { src: '172.18.0.3', dst: '10.213.0.2', sport: 40000, dport: 3128 },
        reply: { src: '10.213.0.2', dst: '10.213.0.1', sport: 3128, dport: 40001 },
        startNs: '1700000000000000000',
      },
    },
    docker: { state: 'synced', containers: 1, syncMs: 38 },
    containerAddress: '172.18.0.3',
    container: web,
    owners: [],
    name: { template: 'compose', value: 'shop.web' },
    pin: null,
    answer: { reply: '40001 , 3128 : USERID : OTHER : shop.web', kind: 'USERID', name: 'shop.web' },
    outcome: 'found',
    reason: 'container found',
    notes: [],
    ...over,
  };
}

const ERROR_ANSWER = (code: 'NO-USER' | 'UNKNOWN-ERROR') => ({
  reply: `40001 , 3128 : ERROR : ${code}`,
  kind: 'ERROR' as const,
  code,
});

test('a found container: every step, in text and JSON', () => {
  const r = report();
  const text = formatExplain(r, 1_700_000_012_300);
  assert.match(
    text,
    /^ 1\. query {7}port 40001 here, port 3128 on 10\.213\.0\.2; our address 10\.213\.0\.1 \(--local\)$/m,
  );
  assert.match(text, /^ 2\. reply tuple tcp 10\.213\.0\.2:3128 -> 10\.213\.0\.1:40001$/m);
  assert.match(text, /^ 3\. conntrack {3}netlink \(opened in 2 ms\) answered in 61 µs: entry found$/m);
  assert.match(text, /^ {16}orig {2}172\.18\.0\.3:40000 -> 10\.213\.0\.2:3128$/m);
  assert.match(text, /state ESTABLISHED, status ASSURED SRC_NAT, started 2023-11-14T22:13:20\.000Z \(12\.3 s ago\)/);
  assert.match(text, /^ 4\. docker {6}synced \(synced in 38 ms\), 1 containers indexed$/m);
  assert.match(text, /^ 5\. container {3}at 172\.18\.0\.3: shop-web-1 {2}id 3f2a1b9c0d1e$/m);
  assert.match(text, /^ {16}network shop_default: 172\.18\.0\.3, fd00:214::3$/m);
  assert.match(text, /^ {16}label com\.docker\.compose\.service="web"$/m);
  assert.match(text, /^ 6\. name {8}template "compose" -> "shop\.web"$/m);
  assert.match(text, /^ 7\. answer {6}40001 , 3128 : USERID : OTHER : shop\.web$/m);
  assert.match(text, /^ {16}reason: container found$/m);
  assert.match(text, /^ {16}outcome: found$/m);
  assert.doesNotMatch(text, /^note:/m);
  const json = JSON.parse(explainJson(r)) as ExplainReport;
  assert.equal(json.answer.name, 'shop.web');
  assert.equal(json.outcome, 'found');
  assert.equal(json.conntrack.entry?.startNs, '1700000000000000000');
});

test('each step that was not reached, or decided an ERROR, says so', () => {
  const noEntry = formatExplain(
    report({
      conntrack: { source: 'netlink', openMs: 2, lookupUs: 40, result: 'none' },
      containerAddress: null,
      container: null,
      name: null,
      answer: ERROR_ANSWER('NO-USER'),
      outcome: 'no-entry',
      reason: 'no conntrack entry with this reply tuple',
    }),
  );
  assert.match(noEntry, /answered in 40 µs: no entry with this reply tuple$/m);
  assert.match(noEntry, /^ 5\. container {3}not looked up$/m);
  assert.match(noEntry, /^ 6\. name {8}not reached$/m);
  assert.match(noEntry, /^ {16}outcome: no-entry$/m);

  const failed = formatExplain(
    report({
      conntrack: { source: 'netlink', openMs: 2, lookupUs: 5_000_100, result: 'failed', error: 'ETIMEDOUT: late' },
      containerAddress: null,
      container: null,
      name: null,
      answer: ERROR_ANSWER('UNKNOWN-ERROR'),
      outcome: 'lookup-failed',
      reason: 'conntrack lookup failed: ETIMEDOUT late',
    }),
  );
  assert.match(failed, /^ 3\. conntrack {3}netlink \(opened in 2 ms\) failed in 5\.00 s: ETIMEDOUT: late$/m);

  const notOpened = formatExplain(
    report({
      tuple: null,
      conntrack: { source: null, openMs: null, lookupUs: null, result: 'failed', error: 'MODULE_NOT_FOUND: x' },
      docker: { state: 'not started', containers: 0, syncMs: null },
      containerAddress: null,
      container: null,
      name: null,
      answer: ERROR_ANSWER('UNKNOWN-ERROR'),
      outcome: 'source-unavailable',
      reason: 'cannot open a conntrack source: x',
    }),
  );
  assert.match(notOpened, /^ 2\. reply tuple not built$/m);
  assert.match(notOpened, /^ 3\. conntrack {3}no conntrack source failed: MODULE_NOT_FOUND: x$/m);

  const down = formatExplain(
    report({
      docker: { state: 'connecting', containers: 1, syncMs: null },
      container: null,
      name: null,
      answer: ERROR_ANSWER('UNKNOWN-ERROR'),
      outcome: 'index-unavailable',
      reason: 'Docker index unavailable: Docker event stream down',
    }),
  );
  assert.match(down, /^ 4\. docker {6}connecting, 1 containers indexed$/m);

  const nobody = formatExplain(report({ container: null, name: null, outcome: 'no-owner' }));
  assert.match(nobody, /^ 5\. container {3}at 172\.18\.0\.3: none found$/m);

  const empty = formatExplain(report({ name: { template: 'swarm', value: null }, outcome: 'template-empty' }));
  assert.match(empty, /^ 6\. name {8}template "swarm" -> nothing \(NO-USER\)$/m);

  const twice = formatExplain(
    report({ container: null, owners: [web, { ...web, id: 'ffff00001111', name: 'impostor' }], name: null }),
  );
  assert.match(twice, /^ 5\. container {3}at 172\.18\.0\.3: claimed by 2 containers$/m);
  assert.match(twice, /^ {16}impostor {2}id ffff00001111$/m);

  const skipped = formatExplain(
    report({
      query: { portOnServer: 40001, portOnClient: 3128, querier: '10.213.0.2', local: null, localFrom: 'unknown' },
      tuple: null,
      conntrack: { source: null, openMs: null, lookupUs: null, result: 'skipped' },
      outcome: 'no-route',
    }),
  );
  assert.match(skipped, /our address unknown$/m);
  assert.match(skipped, /^ 3\. conntrack {3}not asked$/m);
});

test('notes follow the steps', () => {
  const text = formatExplain(report({ notes: ['explain lists the containers afresh: ...'] }));
  assert.match(text, /^note: explain lists the containers afresh/m);
});

test('with --bind-ports a port step shows the pin (or why there is none), and the later steps move down one', () => {
  const pinned = formatExplain(
    report({ pin: { reached: true, pinned: true, hostIfname: 'veth50d1e9f', mac: '02:42:ac:11:00:02' } }),
  );
  assert.match(pinned, /^ 6\. port {8}pinned to veth50d1e9f \(MAC 02:42:ac:11:00:02\) in table bridge docker_identd$/m);
  assert.match(pinned, /^ 7\. name /m);
  assert.match(pinned, /^ 8\. answer /m);
  const pending = formatExplain(
    report({
      pin: {
        reached: true,
        pinned: false,
        reason: 'pending',
        detail: 'the rules for its port are not in the kernel yet',
      },
      outcome: 'unpinned',
    }),
  );
  assert.match(pending, /^ 6\. port {8}not pinned \(pending\): the rules for its port are not in the kernel yet$/m);
  assert.match(formatExplain(report({ pin: { reached: false } })), /^ 6\. port {8}not reached \(--bind-ports\)$/m);
  assert.doesNotMatch(formatExplain(report()), /^ *\d+\. port /m, 'no port step without --bind-ports');
});
