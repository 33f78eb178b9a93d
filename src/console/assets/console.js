// kasuhara-guard supervisor console: live alerts over server-sent events, acknowledgements
// over a JSON POST. Plain browser JavaScript, no build step. Every text that comes from the
// server is set with textContent, never parsed as HTML.
"use strict";

const CATEGORIES = {
  ATTACK: "身体的・精神的な攻撃",
  INTIMIDATION: "威圧的な言動",
  RESTRAINT: "拘束的な行動",
  DOGEZA: "土下座の要求",
  PERSISTENCE: "継続的・執拗な言動",
  DISCRIMINATION_SEXUAL: "差別的・性的な言動",
  PERSONAL_ATTACK: "従業者個人への攻撃",
  ONLINE_EXPOSURE: "SNS等への投稿",
  EXCESSIVE_DEMAND: "過剰な要求",
  OTHER: "その他",
};
const SEVERITIES = { LOW: "低", MEDIUM: "中", HIGH: "高", CRITICAL: "重大" };
const STATUSES = { CONFIRMED: "確定", PROVISIONAL: "暫定", RETRACTED: "取消" };
const OUTCOMES = {
  SEEN: "確認のみ",
  WARNED_CUSTOMER: "顧客に警告した",
  TOOK_OVER: "対応を引き継いだ",
  ENDED_CALL: "通話を終了した",
  FALSE_ALARM: "誤検知",
  ESCALATED: "法務・警察へ",
  NO_ACTION: "対応不要",
};
const GAP_REASONS = {
  HISTORY_EXPIRED: "履歴の保存期間を過ぎていました",
  SUBSCRIBER_LAGGED: "受信が追いつきませんでした",
  CURSOR_UNKNOWN: "サーバーが再起動しました（件数不明）",
};
const END_REASONS = { end: "終了", closed: "切断", idle: "無通信で終了" };

const $ = (id) => document.getElementById(id);
const state = {
  source: null,
  alerts: new Map(), // alert_id -> { alert, ack, element }
  conversations: new Map(), // conversation_id -> { alerts: Map, summary }
  openConversation: null,
};

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function timeText(ms) {
  return new Date(ms).toLocaleTimeString("ja-JP", { hour12: false });
}

function setConnection(stateName, text) {
  const c = $("connection");
  c.dataset.state = stateName;
  c.textContent = text;
}

function notice(text) {
  const n = el("div", text, "notice");
  $("notices").prepend(n);
  while ($("notices").children.length > 5) $("notices").lastChild.remove();
}

function conversation(id) {
  if (!state.conversations.has(id)) {
    state.conversations.set(id, { alerts: new Map(), summary: null });
  }
  return state.conversations.get(id);
}

// The quote in its context, the matched words marked.
function evidenceItem(e) {
  const li = el("li");
  const chars = Array.from(e.context || e.quote);
  const start = e.context ? e.context_start : 0;
  const length = e.end - e.start;
  const q = el("q");
  q.append(chars.slice(0, start).join(""));
  q.append(el("mark", chars.slice(start, start + length).join("")));
  q.append(chars.slice(start + length).join(""));
  li.append(q, " ", el("span", `${e.entry_id} — ${e.reason}`, "reason"));
  return li;
}

function renderAlert(record) {
  const a = record.alert;
  let li = record.element;
  if (!li) {
    li = $("alert-template").content.firstElementChild.cloneNode(true);
    li.dataset.alertId = a.alert_id;
    li.querySelector(".ack-button").addEventListener("click", () => acknowledge(a.alert_id));
    li.querySelector(".conversation").addEventListener("click", () =>
      showConversation(record.alert.conversation_id),
    );
    record.element = li;
  }
  li.className = `alert sev-${a.severity}` + (a.status === "RETRACTED" ? " retracted" : "") +
    (record.ack ? " acknowledged" : "") + (record.fresh ? " fresh" : "");
  li.dataset.severity = a.severity;
  li.dataset.status = a.status;
  li.querySelector(".severity").textContent = SEVERITIES[a.severity] || a.severity;
  const category = li.querySelector(".category");
  category.textContent = CATEGORIES[a.category] || a.category;
  category.append(" ", el("small", a.category));
  li.querySelector(".status").textContent = STATUSES[a.status] || a.status;
  li.querySelector(".time").textContent = timeText(a.created_at);
  li.querySelector(".conversation").textContent = a.conversation_id || "（単発テキスト）";
  li.querySelector(".queue").textContent = a.queue ? `キュー ${a.queue}` : "";
  li.querySelector(".agent").textContent = a.agent_id ? `担当 ${a.agent_id}` : "";
  li.querySelector(".risk").textContent = `リスク ${a.risk_score.toFixed(2)}`;
  const evidence = li.querySelector(".evidence");
  evidence.replaceChildren(...a.evidence.map(evidenceItem));
  li.querySelector(".policy-item").textContent = a.policy_item;
  li.querySelector(".action").textContent = a.recommended_action;
  const status = li.querySelector(".ack-status");
  if (record.ack) {
    const k = record.ack;
    status.className = "ack-status";
    status.textContent = `確認済み：${OUTCOMES[k.outcome] || k.outcome}（${k.acknowledged_by}、` +
      `${timeText(k.acknowledged_at)}）` + (k.note ? ` メモ：${k.note}` : "");
    li.dataset.acknowledged = k.outcome;
  }
  return li;
}

function upsertAlert(alert, fresh) {
  let record = state.alerts.get(alert.alert_id);
  const isNew = !record;
  if (isNew) {
    record = { alert, ack: null, element: null, fresh };
    state.alerts.set(alert.alert_id, record);
  } else {
    record.alert = alert;
    record.fresh = false;
  }
  const li = renderAlert(record);
  if (isNew) $("alerts").prepend(li);
  conversation(alert.conversation_id).alerts.set(alert.alert_id, alert);
  $("alert-count").textContent = state.alerts.size;
  $("empty").hidden = state.alerts.size > 0;
  if (state.openConversation === alert.conversation_id) showConversation(alert.conversation_id);
}

// Risk score over time for one conversation: a step line over its alerts in time order.
function drawRiskChart(alerts) {
  const svg = $("risk-chart");
  const ns = "http://www.w3.org/2000/svg";
  const W = 420, H = 180, L = 34, R = 10, T = 10, B = 26;
  const node = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };
  svg.replaceChildren();
  for (const v of [0, 0.5, 1]) {
    const y = T + (1 - v) * (H - T - B);
    svg.append(node("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }));
    svg.append(node("text", { x: 4, y: y + 3 }, v.toFixed(1)));
  }
  svg.append(node("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  svg.append(node("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  const points = alerts.filter((a) => a.status !== "RETRACTED")
    .sort((a, b) => a.created_at - b.created_at);
  if (points.length === 0) return;
  const t0 = points[0].created_at;
  const span = Math.max(1, points[points.length - 1].created_at - t0);
  const x = (t) => points.length === 1
    ? (L + W - R) / 2
    : L + 5 + ((t - t0) / span) * (W - L - R - 10);
  const y = (v) => T + (1 - v) * (H - T - B);
  // A step line: the score holds until the next alert changes it.
  let previous = 0;
  let d = `M ${x(t0)} ${y(0)}`;
  for (const p of points) {
    d += ` L ${x(p.created_at)} ${y(previous)} L ${x(p.created_at)} ${y(p.risk_score)}`;
    previous = p.risk_score;
  }
  svg.append(node("path", { d, class: "line" }));
  for (const p of points) {
    svg.append(node("circle", { cx: x(p.created_at), cy: y(p.risk_score), r: 3.5, fill: `var(--${p.severity.toLowerCase()})` }));
  }
  svg.append(node("text", { x: L, y: H - 8 }, timeText(t0)));
  if (points.length > 1) {
    svg.append(node("text", { x: W - R - 50, y: H - 8 }, timeText(points[points.length - 1].created_at)));
  }
}

function showConversation(id) {
  state.openConversation = id;
  const c = conversation(id);
  $("conversation-panel").hidden = false;
  $("conversation-title").textContent = id;
  const alerts = Array.from(c.alerts.values());
  drawRiskChart(alerts);
  $("conversation-alerts").replaceChildren(
    ...alerts.sort((a, b) => a.created_at - b.created_at).map((a) =>
      el("li", `${timeText(a.created_at)} ${SEVERITIES[a.severity]} ${CATEGORIES[a.category] || a.category}` +
        `（${STATUSES[a.status]}）リスク ${a.risk_score.toFixed(2)}`)),
  );
  const s = c.summary;
  $("conversation-summary").textContent = s
    ? `${END_REASONS[s.reason] || s.reason}：${s.segments} 発話、${Math.round(s.duration_ms / 1000)} 秒、` +
      `最終リスク ${s.risk_score.toFixed(2)}、最高重大度 ${s.peak_severity ? SEVERITIES[s.peak_severity] : "なし"}`
    : "通話中";
}

async function acknowledge(alertId) {
  const record = state.alerts.get(alertId);
  const li = record.element;
  const status = li.querySelector(".ack-status");
  const supervisor = $("supervisor").value.trim();
  if (!supervisor) {
    status.className = "ack-status error";
    status.textContent = "担当者IDを入力してください";
    $("supervisor").focus();
    return;
  }
  const body = {
    tenant_id: record.alert.tenant_id,
    alert_id: alertId,
    acknowledged_by: supervisor,
    outcome: li.querySelector(".outcome").value,
    note: li.querySelector(".note").value,
  };
  status.className = "ack-status";
  status.textContent = "送信中…";
  try {
    const response = await fetch("/api/acknowledge", {
      method: "POST",
      headers: { "content-type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    });
    const result = await response.json();
    if (!response.ok) throw new Error(result.error || response.statusText);
    applyAcknowledgement(result);
    loadEntryStats();
  } catch (error) {
    status.className = "ack-status error";
    status.textContent = `送信できませんでした：${error.message}`;
  }
}

function applyAcknowledgement(ack) {
  const record = state.alerts.get(ack.alert.alert_id);
  if (!record) return upsertAlertWithAck(ack);
  record.ack = ack;
  record.alert = ack.alert;
  renderAlert(record);
}

function upsertAlertWithAck(ack) {
  upsertAlert(ack.alert, false);
  applyAcknowledgement(ack);
}

async function loadEntryStats() {
  const tenant = $("tenant").value.trim();
  if (!tenant) return;
  const response = await fetch(`/api/entry-stats?tenant_id=${encodeURIComponent(tenant)}`,
    { headers: authHeaders() });
  if (!response.ok) return;
  const stats = await response.json();
  $("entry-stats").tBodies[0].replaceChildren(...stats.slice(0, 30).map((s) => {
    const tr = el("tr", undefined, s.false_alarms > 0 ? "misfiring" : "");
    tr.append(el("td", s.entry_id), el("td", s.alerts, "num"), el("td", s.acknowledged, "num"),
      el("td", s.false_alarms, "num"));
    return tr;
  }));
}

// The supervisor's bearer token, when the server has authentication on. It is kept in this
// tab's sessionStorage only (never localStorage or the address bar), and sent as a header;
// EventSource cannot send headers, so the event stream carries it as `access_token`.
function authHeaders() {
  const token = $("token").value.trim();
  return token ? { authorization: `Bearer ${token}` } : {};
}

function eventsUrl() {
  const params = new URLSearchParams({ tenant_id: $("tenant").value.trim(), cursor: "0" });
  if ($("token").value.trim()) params.set("access_token", $("token").value.trim());
  if ($("min-severity").value) params.set("min_severity", $("min-severity").value);
  const categories = Array.from(document.querySelectorAll("#categories input:checked")).map((c) => c.value);
  if (categories.length) params.set("categories", categories.join(","));
  if ($("queues").value.trim()) params.set("queues", $("queues").value.trim());
  if ($("conversations").value.trim()) params.set("conversation_ids", $("conversations").value.trim());
  return `/api/events?${params}`;
}

// (Re)subscribes from the start of the tenant's history with the current filters. After that
// the browser's own reconnects resume from the last event id (the server's cursor).
function connect() {
  if (state.source) state.source.close();
  state.alerts.clear();
  state.conversations.clear();
  $("alerts").replaceChildren();
  $("alert-count").textContent = "0";
  $("empty").hidden = false;
  if (!$("tenant").value.trim()) {
    setConnection("idle", "テナントを入力してください");
    return;
  }
  const params = new URLSearchParams(location.search);
  params.set("tenant", $("tenant").value.trim());
  if ($("supervisor").value.trim()) params.set("supervisor", $("supervisor").value.trim());
  history.replaceState(null, "", `?${params}`);
  setConnection("connecting", "接続中…");
  let replaying = true;
  const source = new EventSource(eventsUrl());
  state.source = source;
  source.onopen = () => setConnection("open", "受信中");
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) setConnection("error", "接続できません（設定を確認してください）");
    else setConnection("retrying", "再接続中…");
  };
  const seen = () => { $("last-seen").textContent = `最終受信 ${timeText(Date.now())}`; };
  source.addEventListener("alert", (m) => { seen(); upsertAlert(JSON.parse(m.data), !replaying); });
  source.addEventListener("update", (m) => { seen(); upsertAlert(JSON.parse(m.data).alert, false); });
  source.addEventListener("acknowledgement", (m) => { seen(); applyAcknowledgement(JSON.parse(m.data)); });
  source.addEventListener("summary", (m) => {
    seen();
    const s = JSON.parse(m.data);
    conversation(s.conversation_id).summary = s;
    if (state.openConversation === s.conversation_id) showConversation(s.conversation_id);
  });
  source.addEventListener("gap", (m) => {
    const g = JSON.parse(m.data);
    const count = g.missed > 0 ? `${g.missed} 件のイベント` : "イベント";
    notice(`${count}を受信できませんでした：${GAP_REASONS[g.reason] || g.reason}`);
  });
  source.addEventListener("heartbeat", () => { seen(); replaying = false; });
  loadEntryStats();
}

function init() {
  const fieldset = $("categories");
  for (const [code, label] of Object.entries(CATEGORIES)) {
    const l = el("label");
    const box = el("input");
    box.type = "checkbox";
    box.value = code;
    l.append(box, ` ${label}`);
    fieldset.append(l);
  }
  const params = new URLSearchParams(location.search);
  $("tenant").value = params.get("tenant") || localStorage.getItem("kasuhara.tenant") || "";
  $("supervisor").value = params.get("supervisor") || localStorage.getItem("kasuhara.supervisor") || "";
  $("token").value = sessionStorage.getItem("kasuhara.token") || "";
  $("settings").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem("kasuhara.tenant", $("tenant").value.trim());
    localStorage.setItem("kasuhara.supervisor", $("supervisor").value.trim());
    sessionStorage.setItem("kasuhara.token", $("token").value.trim());
    connect();
  });
  $("close-conversation").addEventListener("click", () => {
    state.openConversation = null;
    $("conversation-panel").hidden = true;
  });
  $("refresh-stats").addEventListener("click", loadEntryStats);
  connect();
}

init();
