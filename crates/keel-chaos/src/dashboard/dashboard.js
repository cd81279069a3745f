// keel's dashboard: a snapshot of /v1/state every second, the feed of /v1/feed as it
// comes, and buttons that call keel up's control API with the admin token.
"use strict";

const $ = (id) => document.getElementById(id);
const SAMPLES = 120; // two minutes of one-second samples
const history = []; // {requests, errors} per second
let previous = null; // the last snapshot's counters, for rates
let token = sessionStorage.getItem("keel-token") || "";

function text(tag, content, className) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (className) el.className = className;
  return el;
}

function stateClass(state) {
  if (["running", "up", "primary", "standby", "leader"].includes(state)) return "state good";
  if (["paused", "warming", "drained", "lagging"].includes(state) || state.startsWith("running (")) return "state warn";
  return "state bad";
}

function roleClass(role) {
  if (["primary", "leader", "standby", "follower"].includes(role)) return "state good";
  if (role === "down") return "state bad";
  return "";
}

function say(message, bad) {
  const outcome = $("outcome");
  outcome.textContent = message;
  outcome.className = bad ? "bad" : "";
}

async function act(path, label) {
  if (!token) {
    say(`${label}: refused here — give the admin token first (keel-data/admin.token)`, true);
    $("token").focus();
    return;
  }
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: label.body ? JSON.stringify(label.body) : undefined,
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok) say(body.message || `${label.text || label}: done`, false);
    else say(`${label.text || label}: refused (${response.status}): ${body.message || response.statusText}`, true);
  } catch (e) {
    say(`${label.text || label}: keel up does not answer (${e})`, true);
  }
  refresh();
}

// A node of `view` (a monitor's) named `name`, or null.
function nodeOf(view, name) {
  return view && view.nodes ? view.nodes.find((n) => n.node === name) || null : null;
}

function processRow(p, dataView, pgView, ownGroup) {
  const row = document.createElement("tr");
  row.appendChild(text("th", p.name));
  row.appendChild(text("td", p.state, stateClass(p.state)));
  // A data node, or a PostgreSQL keeper: each group has a monitor of its own.
  const dataNode = nodeOf(dataView, p.name);
  const node = dataNode || nodeOf(pgView, p.name);
  const view = dataNode || !node ? dataView : pgView;
  const group = dataView && dataView.monitors;
  let role = "", details = "";
  const primary = view && view.primary ? view.primary.node : null;
  if (node) {
    // The monitor's word, not the node's last heartbeat: that may lag a failover.
    role = p.state === "exited" ? "down" : primary === p.name ? "primary" : node.role;
    details = (ownGroup ? `${ownGroup.group} (slots ${ownGroup.slots || "?"}), ` : "") +
      `epoch ${node.epoch}, lsn ${node.lsn}` +
      (node.last_heartbeat_ms_ago != null ? `, heartbeat ${node.last_heartbeat_ms_ago} ms ago` : "") +
      (node.sync ? ", in the sync set" : "") +
      (role === "standby" ? (node.promotable ? ", promotable" : `, not promotable: ${node.why_not_promotable || "?"}`) : "");
  } else if (group && group.members && group.members.some((m) => m.id === p.name)) {
    role = group.leader === p.name ? "leader" : "follower";
    if (group.leader === p.name) details = `term ${group.term}, applied ${group.last_applied ?? "-"}`;
  } else if ((p.name === "monitor" && dataView) || (p.name === "pgmonitor" && pgView)) {
    const seen = p.name === "monitor" ? dataView : pgView;
    role = "monitor";
    details = `epoch ${seen.epoch}` + (seen.failover_in_progress ? ", failover in progress" : "");
  }
  row.appendChild(text("td", role, roleClass(role)));
  row.appendChild(text("td", details || p.url));
  const actions = document.createElement("td");
  const running = p.state !== "exited";
  for (const action of ["kill", "pause", "resume", "restart"]) {
    const disabled = (action === "resume" && p.state !== "paused") ||
      (action === "pause" && p.state !== "running") ||
      (action === "kill" && !running);
    const button = text("button", action);
    button.type = "button";
    button.disabled = disabled;
    button.setAttribute("aria-label", `${action} ${p.name}`);
    button.addEventListener("click", () => act(`/v1/processes/${encodeURIComponent(p.name)}/${action}`, `${action} ${p.name}`));
    actions.appendChild(button);
  }
  if (node && role === "standby" && p.state === "running") {
    const button = text("button", "switchover");
    button.type = "button";
    button.setAttribute("aria-label", `switchover to ${p.name}`);
    button.addEventListener("click", () => act("/v1/switchover", { text: `switchover to ${p.name}`, body: { to: p.name } }));
    actions.appendChild(button);
  }
  // The data tier's nodes and monitors only: a partition cuts the data tier.
  if (dataNode || (group && group.members && group.members.some((m) => m.id === p.name))) {
    const button = text("button", "partition");
    button.type = "button";
    button.setAttribute("aria-label", `partition ${p.name} from the rest of the data tier`);
    button.addEventListener("click", () => act("/v1/partition", { text: `partition ${p.name}`, body: { node: p.name, from: [] } }));
    actions.appendChild(button);
  }
  row.appendChild(actions);
  return row;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function rate(now, before, key) {
  return before && now[key] >= before[key] ? now[key] - before[key] : 0;
}

// The p99 of the answers of one second, in ms, from two cumulative histograms a second
// apart ([[upper bound in s or null for +Inf, count], …]); null when nothing answered.
// The bucket's upper bound stands for the answers in it, as Prometheus does.
function p99Between(now, before) {
  if (!now || !before || now.length !== before.length) return null;
  const deltas = now.map(([bound, count], i) => [bound, count - before[i][1]]);
  const total = deltas[deltas.length - 1][1];
  if (total <= 0) return null;
  const wanted = Math.ceil(total * 0.99);
  for (const [bound, cumulative] of deltas) {
    if (cumulative >= wanted) return bound == null ? null : bound * 1000;
  }
  return null;
}

function drawChart() {
  const svg = $("chart");
  const max = Math.max(10, ...history.map((h) => Math.max(h.requests, h.errors)));
  const maxMs = Math.max(1, ...history.map((h) => h.p99 || 0));
  const x = (i) => (i * 600) / (SAMPLES - 1);
  const points = (key) => history.map((h, i) => `${x(i)},${118 - (h[key] * 112) / max}`).join(" ");
  const p99 = history.map((h, i) => (h.p99 == null ? null : `${x(i)},${118 - (h.p99 * 112) / maxMs}`))
    .filter(Boolean).join(" ");
  svg.innerHTML =
    `<polyline fill="none" stroke="#0969da" stroke-width="2" points="${points("requests")}"/>` +
    `<polyline fill="none" stroke="#cf222e" stroke-width="2" points="${points("errors")}"/>` +
    `<polyline fill="none" stroke="#8250df" stroke-width="1.5" stroke-dasharray="4 2" points="${p99}"/>` +
    `<text x="4" y="12" font-size="10">${max}/s</text>` +
    `<text x="540" y="12" font-size="10" fill="#8250df">${maxMs} ms</text>`;
  const last = history[history.length - 1];
  $("chart-now").textContent = last
    ? `now: ${last.requests} requests/s, ${last.errors} 5xx/s, p99 ${last.p99 == null ? "-" : `≤ ${last.p99} ms`}`
    : "";
}

function render(state) {
  const view = state.cluster;
  const pgView = state.pg_cluster;
  const primary = view && view.primary ? view.primary.node : null;
  const parts = [];
  if (state.data_tier && state.groups) {
    // Several groups: each one's primary, then the slot table.
    for (const g of state.groups) {
      const v = g.view;
      parts.push(v && v.primary ? `${g.group} primary: ${v.primary.node} (epoch ${v.epoch})` : `${g.group}: no primary`);
      if (v && v.failover_in_progress) parts.push(`${g.group} failover in progress`);
    }
    if (state.slots) {
      parts.push(`slot table version ${state.slots.version}`);
      const m = state.slots.moving;
      if (m) parts.push(`moving slots ${m.slots} from ${m.from} to ${m.to}`);
    }
    if (view && view.monitors && view.monitors.leader) parts.push(`monitors' leader: ${view.monitors.leader}`);
  } else if (state.data_tier) {
    parts.push(primary ? `primary: ${primary} (epoch ${view.epoch})` : (state.monitor_error || "no primary"));
    if (view && view.failover_in_progress) parts.push("failover in progress");
    if (view && view.monitors && view.monitors.leader) parts.push(`monitors' leader: ${view.monitors.leader}`);
  }
  if (state.postgres) {
    const pgPrimary = pgView && pgView.primary ? pgView.primary.node : null;
    parts.push(pgPrimary ? `PostgreSQL primary: ${pgPrimary} (epoch ${pgView.epoch})` : (state.pg_monitor_error || "no PostgreSQL primary"));
    if (pgView && pgView.failover_in_progress) parts.push("PostgreSQL failover in progress");
  }
  if (state.proxy_error) parts.push(state.proxy_error);
  $("summary").textContent = parts.join(" · ") || "running";

  fill($("processes").tBodies[0], (state.processes || []).map((p) => {
    // Under several groups a data node's role is its own group's word.
    const own = (state.groups || []).find((g) => nodeOf(g.view, p.name));
    return processRow(p, own ? own.view : view, pgView, own ? own : null);
  }));

  const backends = (state.backends && state.backends.backends) || [];
  const totals = { requests: 0, errors: 0 };
  const perBackend = {};
  for (const b of backends) {
    totals.requests += b.requests;
    totals.errors += b.responses["5xx"];
    perBackend[b.name] = { requests: b.requests, errors: b.responses["5xx"] };
  }
  fill($("backends").tBodies[0], backends.map((b) => {
    const row = document.createElement("tr");
    const before = previous && previous.perBackend[b.name];
    row.appendChild(text("th", b.name));
    row.appendChild(text("td", b.state, stateClass(b.state)));
    row.appendChild(text("td", String(b.weight)));
    row.appendChild(text("td", String(rate(perBackend[b.name], before, "requests"))));
    row.appendChild(text("td", String(rate(perBackend[b.name], before, "errors"))));
    row.appendChild(text("td", b.why || ""));
    return row;
  }));

  const pools = (state.tcp && state.tcp.pools) || [];
  $("tcp").hidden = pools.length === 0;
  fill($("tcp").tBodies[0], pools.flatMap((pool) => pool.servers.map((s) => {
    const row = document.createElement("tr");
    row.appendChild(text("th", s.name));
    const role = s.up ? (s.role || "?") : "down";
    row.appendChild(text("td", role, stateClass(role)));
    row.appendChild(text("td", s.lag_seconds == null ? "-" : `${s.lag_seconds.toFixed(1)} s`));
    row.appendChild(text("td", [s.in_read_write ? "read-write" : "", s.in_read_only ? "read-only" : ""].filter(Boolean).join(", ") || "none"));
    row.appendChild(text("td", `${s.sessions_open.read_write} rw, ${s.sessions_open.read_only} ro`));
    row.appendChild(text("td", s.last_check_error || "ok"));
    return row;
  })));

  if (previous) {
    history.push({
      requests: rate(totals, previous.totals, "requests"),
      errors: rate(totals, previous.totals, "errors"),
      p99: p99Between(state.latency_buckets, previous.latency),
    });
    if (history.length > SAMPLES) history.shift();
    drawChart();
  }
  previous = { totals, perBackend, latency: state.latency_buckets };
}

async function refresh() {
  try {
    const response = await fetch("/v1/state");
    render(await response.json());
  } catch (e) {
    $("summary").textContent = `keel up does not answer (${e})`;
  }
}

function follow() {
  const source = new EventSource("/v1/feed");
  source.addEventListener("line", (event) => {
    const line = JSON.parse(event.data);
    const own = line.source === "keel up" || line.source === "monitor" || line.source === "pgmonitor";
    const item = document.createElement("li");
    item.dataset.own = own;
    item.hidden = !own && !$("all-lines").checked;
    item.appendChild(text("span", line.at.slice(11, 23) + " "));
    item.appendChild(text("span", line.source, "source"));
    item.appendChild(document.createTextNode(" " + line.text));
    const list = $("timeline");
    list.prepend(item);
    while (list.children.length > 500) list.lastChild.remove();
  });
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("keel-token", token);
  say(token ? "admin token set for this tab" : "admin token cleared", false);
});
$("heal").addEventListener("click", () => act("/v1/heal", "heal"));
$("all-lines").addEventListener("change", () => {
  for (const item of $("timeline").children) item.hidden = item.dataset.own !== "true" && !$("all-lines").checked;
});

// A script error is shown, and counted where a test can read it.
function pageError(message) {
  document.body.dataset.errors = String(Number(document.body.dataset.errors || 0) + 1);
  say(`page error: ${message}`, true);
}
window.addEventListener("error", (event) => pageError(event.message));
window.addEventListener("unhandledrejection", (event) => pageError(String(event.reason)));

refresh();
setInterval(refresh, 1000);
follow();
