// The web console (docs/operations.md): a page per hash (#overview, #lag, #messages, #sql,
// #users) over the HTTP API with the logged-in user's token. Everything it shows comes from
// the API as that user may see it; pages a role may not use are not offered, and the API
// refuses them anyway.

const ROLES = ["user", "service", "dba", "system"];
const PAGES = ["login", "overview", "lag", "messages", "sql", "users"];
const REFRESH_MS = 2000;
const LAG_WINDOW_MS = 10 * 60 * 1000;

const $ = (id) => document.getElementById(id);
const session = {
  token: sessionStorage.getItem("tf.token"),
  user: sessionStorage.getItem("tf.user"),
  role: sessionStorage.getItem("tf.role"),
};
// Total lag per "topic\u0000group", sampled every REFRESH_MS: [{t, lag}].
const lagHistory = new Map();
let refreshTimer = null;

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || "http_" + status;
    this.statement = e.statement;
    // /v1/api/sql: the results of the statements before the failing one (they committed).
    this.results = (body && body.results) || [];
  }
  // The error as the API returned it: its code, the failing statement and the message.
  shown() {
    return `${this.code}${this.statement ? ` (statement ${this.statement})` : ""}: ${this.message}`;
  }
}

// JSON numbers as the server wrote them: a BIGINT beyond 2^53 or a DECIMAL like 1.10 would lose
// digits as a JS number, so those stay raw JSON (shown and re-serialized exactly as sent).
const exactJson = (text) => JSON.parse(text, (_key, value, context) =>
  typeof value === "number" && context && context.source !== String(value) ? JSON.rawJSON(context.source) : value);

// A value for display: raw JSON numbers as their text.
const shown = (v) => (v !== null && typeof v === "object" && "rawJSON" in v ? v.rawJSON : v);

async function call(path, { method = "POST", body, text = false } = {}) {
  // X-Requested-With: a 401 then challenges Bearer only, so the browser shows no password dialog.
  const headers = { "x-requested-with": "topicfusion-console" };
  if (session.token) headers.authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    connection(false);
    throw new Error("no answer from the server (is it running?)");
  }
  connection(true);
  if (resp.status === 401 && session.token) {
    logout("Your session ended: log in again.");
  }
  const raw = await resp.text();
  if (!resp.ok) {
    let parsed = null;
    try { parsed = exactJson(raw); } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, parsed);
  }
  return text ? raw : exactJson(raw);
}

// The banner that says the server does not answer (the pages keep what they last showed).
function connection(ok) {
  $("offline").hidden = ok;
}

const sql = (text) => call("/v1/api/sql", { body: { sql: text } });

// Rows of the last result of `text` as objects keyed by column name.
async function query(text) {
  const out = await sql(text);
  const r = out.results[out.results.length - 1];
  return r.rows.map((row) => Object.fromEntries(r.columns.map((c, i) => [c.name, row[i]])));
}

const quoteIdent = (name) => '"' + String(name).replaceAll('"', '""') + '"';
const quoteText = (s) => "'" + String(s).replaceAll("'", "''") + "'";
const atLeast = (role) => ROLES.indexOf(session.role) >= ROLES.indexOf(role);

function cell(tr, value, cls) {
  const td = document.createElement("td");
  value = shown(value);
  td.textContent = value === null || value === undefined ? "" : String(value);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fillRows(tbody, rows, render) {
  tbody.replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    render(tr, r);
    return tr;
  }));
}

function showError(el, err) {
  if (!err) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.textContent = err instanceof ApiError ? err.shown() : String(err);
}

// ---- login ----

async function login(ev) {
  ev.preventDefault();
  showError($("login-error"), null);
  try {
    const out = await call("/v1/api/auth/login", {
      body: { username: $("login-user").value, password: $("login-password").value },
    });
    Object.assign(session, { token: out.access_token, user: out.user, role: out.role });
    sessionStorage.setItem("tf.token", out.access_token);
    sessionStorage.setItem("tf.user", out.user);
    sessionStorage.setItem("tf.role", out.role);
    $("login-password").value = "";
    location.hash = "#overview";
    route();
  } catch (err) {
    showError($("login-error"), err);
  }
}

function logout(message) {
  sessionStorage.clear();
  Object.assign(session, { token: null, user: null, role: null });
  lagHistory.clear();
  location.hash = "#login";
  route();
  if (message) showError($("login-error"), message);
}

// ---- overview and lag sampling ----

// Dead-letter counts per "topic\u0000group" from /metrics.
async function deadLetters() {
  const text = await call("/metrics", { method: "GET", text: true });
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line.startsWith("topicfusion_dead_letters_total{")) continue;
    // Label values escape \\, \" and newlines (\n).
    const unescape = (v) => v.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    const labels = Object.fromEntries(
      [...line.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], unescape(m[2])]));
    out.set(labels.topic + "\u0000" + labels.group, Number(line.slice(line.lastIndexOf(" ") + 1)));
  }
  return out;
}

async function loadState() {
  const [partitions, groups, claims] = await Promise.all([
    query(`SELECT t.name, t.retention_seconds, t.retention_max_bytes, p.partition_id, p.message_count,
             p.next_offset, p.bytes
           FROM system.topics t JOIN system.topic_partitions p ON t.topic_id = p.topic_id
           ORDER BY t.name, p.partition_id`),
    query(`SELECT t.name, o.group_id, o.partition_id, o.position, o.next_offset, o.lag
           FROM system.topic_offsets o JOIN system.topics t ON t.topic_id = o.topic_id
           ORDER BY t.name, o.group_id, o.partition_id`),
    query(`SELECT t.name, c.group_id, c.partition_id, count(*) AS claimed
           FROM system.topic_claims c JOIN system.topics t ON t.topic_id = c.topic_id
           GROUP BY t.name, c.group_id, c.partition_id`),
  ]);
  return { partitions, groups, claims };
}

function sampleLag(groups) {
  const now = Date.now();
  const totals = new Map();
  for (const g of groups) {
    const k = g.name + "\u0000" + g.group_id;
    totals.set(k, (totals.get(k) || 0) + Number(shown(g.lag)));
  }
  for (const [k, lag] of totals) {
    const h = lagHistory.get(k) || [];
    h.push({ t: now, lag });
    while (h.length && h[0].t < now - LAG_WINDOW_MS) h.shift();
    lagHistory.set(k, h);
  }
}

// 604800 -> "7 d"; 1073741824 -> "1 GiB": the largest unit that divides the value, else the
// value in the smallest.
function inUnits(value, units) {
  for (const [size, name] of units) if (value >= size && value % size === 0) return `${value / size} ${name}`;
  return `${value} ${units[units.length - 1][1]}`;
}

function retention(p) {
  const parts = [];
  if (p.retention_seconds !== null) {
    parts.push(inUnits(Number(shown(p.retention_seconds)), [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]]));
  }
  if (p.retention_max_bytes !== null) {
    parts.push(inUnits(Number(shown(p.retention_max_bytes)), [[1 << 30, "GiB"], [1 << 20, "MiB"], [1 << 10, "KiB"], [1, "bytes"]]) + " per partition");
  }
  return parts.join(", ") || "forever";
}

async function refresh() {
  if (!session.token) return;
  const page = currentPage();
  try {
    const state = await loadState();
    sampleLag(state.groups);
    if (page === "overview") {
      const dead = await deadLetters().catch(() => new Map());
      const part = (name, group, p) => `${name}\u0000${group}\u0000${p}`;
      const claimed = new Map(state.claims.map((c) => [part(c.name, c.group_id, c.partition_id), c.claimed]));
      fillRows($("topics-table").tBodies[0], state.partitions, (tr, p) => {
        cell(tr, p.name);
        cell(tr, p.partition_id, "num");
        cell(tr, p.message_count, "num");
        cell(tr, p.next_offset, "num");
        cell(tr, p.bytes, "num");
        cell(tr, retention(p));
      });
      fillRows($("groups-table").tBodies[0], state.groups, (tr, g) => {
        cell(tr, g.name);
        cell(tr, g.group_id);
        cell(tr, g.partition_id, "num");
        cell(tr, g.position, "num");
        cell(tr, g.next_offset, "num");
        cell(tr, g.lag, Number(shown(g.lag)) > 0 ? "num lagging" : "num");
        cell(tr, claimed.get(part(g.name, g.group_id, g.partition_id)) || 0, "num");
      });
      fillRows($("dead-table").tBodies[0], [...dead].sort(), (tr, [k, n]) => {
        const [topic, group] = k.split("\u0000");
        cell(tr, topic);
        cell(tr, group);
        cell(tr, n, "num");
      });
      $("dead-none").hidden = dead.size > 0;
      $("overview-updated").textContent = "updated " + new Date().toLocaleTimeString();
      showError($("overview-error"), null);
    }
    if (page === "lag") drawLag(state.groups);
  } catch (err) {
    if (page === "overview") showError($("overview-error"), err);
  }
}

function drawLag(groups) {
  const select = $("lag-group");
  const keys = [...new Set(groups.map((g) => g.name + "\u0000" + g.group_id))];
  const chosen = select.value;
  if ([...select.options].map((o) => o.value).join() !== keys.join()) {
    select.replaceChildren(...keys.map((k) => {
      const o = document.createElement("option");
      o.value = k;
      o.textContent = k.replace("\u0000", " / ");
      return o;
    }));
    if (keys.includes(chosen)) select.value = chosen;
  }
  const svg = $("lag-chart");
  const h = lagHistory.get(select.value) || [];
  const W = 800, H = 260, pad = 30;
  const now = Date.now();
  const max = Math.max(1, ...h.map((s) => s.lag));
  const x = (t) => pad + (W - 2 * pad) * (1 - (now - t) / LAG_WINDOW_MS);
  const y = (v) => H - pad - (H - 2 * pad) * (v / max);
  const points = h.map((s) => `${x(s.t).toFixed(1)},${y(s.lag).toFixed(1)}`).join(" ");
  svg.innerHTML =
    `<line x1="${pad}" y1="${H - pad}" x2="${W - pad}" y2="${H - pad}"/>` +
    `<line x1="${pad}" y1="${pad}" x2="${pad}" y2="${H - pad}"/>` +
    `<text x="${pad + 4}" y="${pad - 8}">${max}</text>` +
    `<text x="${pad + 4}" y="${H - 8}">-10 min</text>` +
    `<text x="${W - pad - 30}" y="${H - 8}">now</text>` +
    `<polyline points="${points}"/>`;
  $("lag-now").textContent = h.length ? String(h[h.length - 1].lag) : "–";
}

// ---- message browser ----

async function loadTopics() {
  const topics = await query("SELECT name, partitions FROM system.topics ORDER BY name");
  const select = $("browse-topic");
  const chosen = select.value;
  select.replaceChildren(...topics.map((t) => {
    const o = document.createElement("option");
    o.value = t.name;
    o.textContent = `${t.name} (${t.partitions} partition${t.partitions === 1 ? "" : "s"})`;
    return o;
  }));
  if (topics.some((t) => t.name === chosen)) select.value = chosen;
}

async function browse(ev) {
  ev.preventDefault();
  showError($("browse-error"), null);
  $("messages-table").tBodies[0].replaceChildren();
  const topic = $("browse-topic").value;
  const partition = Number($("browse-partition").value);
  const limit = Number($("browse-limit").value);
  try {
    let start;
    const from = $("browse-from").value;
    if (from === "earliest") start = "Earliest";
    else if (from === "offset") start = { Offset: Number($("browse-offset").value) };
    else {
      // The last `limit` messages: from the partition's next offset back.
      const rows = await query(`SELECT p.earliest_offset, p.next_offset FROM system.topic_partitions p
        JOIN system.topics t ON t.topic_id = p.topic_id
        WHERE t.name = ${quoteText(topic)} AND p.partition_id = ${partition}`);
      const p = rows[0] || { earliest_offset: 0, next_offset: 0 };
      start = { Offset: Math.max(Number(shown(p.earliest_offset)), Number(shown(p.next_offset)) - limit) };
    }
    const out = await call("/v1/api/topics/consume", {
      body: { topic_id: topic, partition_id: partition, start, limit, timeout_ms: 0 },
    });
    fillRows($("messages-table").tBodies[0], out.messages, (tr, m) => {
      cell(tr, m.offset, "num");
      cell(tr, new Date(m.timestamp_ms).toISOString());
      cell(tr, m.op);
      cell(tr, m.source_table);
      cell(tr, JSON.stringify(m.key), "json");
      cell(tr, JSON.stringify(m.payload, null, 1), "json");
    });
    if (out.messages.length === 0) showError($("browse-error"), "no messages there");
  } catch (err) {
    showError($("browse-error"), err);
  }
}

// ---- SQL editor ----

function resultTable(result, n) {
  const table = document.createElement("table");
  table.className = "grid";
  const caption = table.createCaption();
  caption.textContent = `${n}. ${result.row_count} row${result.row_count === 1 ? "" : "s"}`;
  const head = table.createTHead().insertRow();
  for (const c of result.columns) {
    const th = document.createElement("th");
    th.textContent = c.name;
    th.title = c.type;
    head.appendChild(th);
  }
  const body = table.createTBody();
  for (const row of result.rows) {
    const tr = body.insertRow();
    for (const v of row) {
      if (v === null) {
        cell(tr, "NULL", "null");
        continue;
      }
      const numeric = typeof v === "number" || (typeof v === "object" && "rawJSON" in v);
      cell(tr, typeof v === "object" ? JSON.stringify(v) : v, numeric ? "num" : undefined);
    }
  }
  return table;
}

async function runSql() {
  showError($("sql-error"), null);
  $("sql-took").textContent = "running…";
  const results = $("sql-results");
  results.replaceChildren();
  try {
    const out = await sql($("sql-text").value);
    out.results.forEach((r, i) => results.appendChild(resultTable(r, i + 1)));
    $("sql-took").textContent = `${out.results.length} result(s) in ${out.took_ms} ms`;
  } catch (err) {
    // The statements before a failing one committed: their results stay shown above the error.
    (err.results || []).forEach((r, i) => results.appendChild(resultTable(r, i + 1)));
    $("sql-took").textContent = "";
    showError($("sql-error"), err);
  }
}

// ---- users ----

// `keepError`: after a create or drop, whose error must stay shown.
async function loadUsers(keepError) {
  if (!keepError) showError($("users-error"), null);
  try {
    const users = await query("SELECT name, role, created_at FROM system.users ORDER BY name");
    fillRows($("users-table").tBodies[0], users, (tr, u) => {
      cell(tr, u.name);
      cell(tr, u.role);
      cell(tr, u.created_at);
      const td = cell(tr, "");
      // Only a system user may drop a system user (the API refuses the others).
      if (u.name !== session.user && (u.role !== "system" || session.role === "system")) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = "Drop";
        b.onclick = async () => {
          if (!confirm(`Drop user ${u.name}?`)) return;
          showError($("users-error"), null);
          try { await sql(`DROP USER ${quoteIdent(u.name)}`); } catch (err) { showError($("users-error"), err); }
          loadUsers(true);
        };
        td.appendChild(b);
      }
    });
  } catch (err) {
    showError($("users-error"), err);
  }
}

async function createUser(ev) {
  ev.preventDefault();
  showError($("users-error"), null);
  try {
    await sql(`CREATE USER ${quoteIdent($("user-name").value)} WITH PASSWORD ${quoteText($("user-password").value)} ROLE ${$("user-role").value}`);
    $("user-name").value = "";
    $("user-password").value = "";
  } catch (err) {
    showError($("users-error"), err);
  }
  loadUsers(true);
}

// ---- routing ----

function allowed(page) {
  const link = document.querySelector(`#nav a[data-page="${page}"]`);
  return link && (!link.dataset.needs || atLeast(link.dataset.needs));
}

function currentPage() {
  const page = location.hash.slice(1) || "overview";
  if (!session.token) return "login";
  return PAGES.includes(page) && allowed(page) ? page : "overview";
}

function route() {
  const page = currentPage();
  document.querySelectorAll(".page").forEach((s) => { s.hidden = s.id !== "page-" + page; });
  $("nav").hidden = !session.token;
  $("who").hidden = !session.token;
  $("who-name").textContent = session.token ? `${session.user} (${session.role})` : "";
  document.querySelectorAll("#nav a").forEach((a) => {
    // A page the role may not use is not offered.
    a.hidden = !!a.dataset.needs && !atLeast(a.dataset.needs);
    a.classList.toggle("active", a.dataset.page === page);
  });
  // Only a system user may grant role system: the others are not offered it.
  $("user-role").replaceChildren(...ROLES.filter((r) => r !== "system" || session.role === "system").map((r) => {
    const o = document.createElement("option");
    o.textContent = r;
    return o;
  }));
  clearInterval(refreshTimer);
  if (!session.token) return;
  refreshTimer = setInterval(refresh, REFRESH_MS);
  if (page === "overview" || page === "lag") refresh();
  if (page === "messages") loadTopics().catch((err) => showError($("browse-error"), err));
  if (page === "users") loadUsers();
}

$("login-form").addEventListener("submit", login);
$("logout").addEventListener("click", () => logout());
$("browse-form").addEventListener("submit", browse);
$("sql-run").addEventListener("click", runSql);
$("sql-text").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) runSql();
});
$("user-form").addEventListener("submit", createUser);
$("lag-group").addEventListener("change", () => refresh());
window.addEventListener("hashchange", route);
route();
