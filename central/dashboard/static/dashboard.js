/* ami-rcd operations dashboard.
 *
 * Plain JavaScript, no build step and no third-party code: the page reads the
 * coordinator's REST API with a viewer token and draws its charts as inline SVG.
 * The server puts a small JSON configuration into the page (#rcd-config):
 *   { "token": "<viewer token or null>", "refresh_s": 3, "api": { ...paths } }
 * Without a token the page asks for one once and keeps it in sessionStorage.
 */
"use strict";

(function () {
  const CONFIG = JSON.parse(document.getElementById("rcd-config").textContent || "{}");
  const API = Object.assign(
    {
      orders: "/api/v1/orders",
      order: "/api/v1/orders/{id}",
      concentrators: "/api/v1/concentrators",
      workorders: "/api/v1/work-orders?status=open&limit=500",
      stats: "/dashboard/api/stats",
    },
    CONFIG.api || {}
  );
  const REFRESH_MS = Math.max(1, Number(CONFIG.refresh_s || 3)) * 1000;
  const ORDER_LIMIT = Number(CONFIG.order_limit || 200);
  const TOKEN_KEY = "rcd-dashboard-token";

  // The brief's ten steps (Table 2), as this system performs them.
  const STEPS = [
    [1, "Order received", "Legacy sends the order (SOAP) or an operator creates it (REST)"],
    [2, "Routed to the head-end", "mapped to an order and stored"],
    [3, "Meter validated", "registered, commissioned, linked, working day, protected customer"],
    [4, "Sent to the concentrator", "signed order published over MQTT"],
    [5, "Stored by the edge agent", "the agent verified and stored the order (its receipt)"],
    [6, "Meter answers", "the DLMS attempt the outcome rests on: relay state and energy read back"],
    [7, "Retried on KO", "earlier attempts that failed and were retried locally"],
    [8, "Result collected", "order reconciled, relay state updated"],
    [9, "Reported to Legacy", "EndDeviceEvents delivered"],
    [10, "Field work order", "remote execution failed: a technician goes"],
  ];
  const BAD_EVENTS = new Set(["reject", "fail", "expire", "rejected", "failed", "expired"]);
  const OUTCOME_COLORS = {
    connected: "#2e8540",
    disconnected: "#16a085",
    armed: "#2a7ab0",
    failed: "#c0392b",
    expired: "#d98c00",
    rejected: "#8e44ad",
    cancelled: "#8a96a3",
  };
  const OUTCOME_ORDER = Object.keys(OUTCOME_COLORS);

  let token = CONFIG.token || sessionStorage.getItem(TOKEN_KEY) || "";
  let selectedId = null;
  let lastOrders = [];
  let finalStateOf = new Map(); // order id -> final state, for reported orders (from stats)
  let timer = null;

  // ---------------------------------------------------------------- helpers
  const $ = (sel) => document.querySelector(sel);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function parseTime(value) {
    if (!value) return null;
    const t = Date.parse(value);
    return Number.isNaN(t) ? null : t;
  }

  function fmtTime(value, withDate) {
    const t = parseTime(value);
    if (t === null) return "";
    const d = new Date(t);
    const hms = d.toLocaleTimeString([], { hour12: false });
    return withDate ? d.toISOString().slice(0, 10) + " " + hms : hms;
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined || Number.isNaN(s)) return "";
    if (s === 0) return "0";
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function listOf(payload, ...keys) {
    if (Array.isArray(payload)) return payload;
    if (!payload || typeof payload !== "object") return [];
    for (const k of keys.concat(["items", "results", "data"])) {
      if (Array.isArray(payload[k])) return payload[k];
    }
    return [];
  }

  // ------------------------------------------------------------ order model
  function finalState(o) {
    // A reported order no longer shows how it ended: the stats aggregate tells.
    if (o.final_state) return o.final_state;
    if (o.state === "reported" && finalStateOf.has(o.id)) return finalStateOf.get(o.id);
    return o.state || "";
  }

  function outcomeOf(o) {
    if (o.outcome) return String(o.outcome);
    const s = finalState(o);
    if (s.startsWith("completed_")) return s.slice("completed_".length);
    if (["failed", "expired", "cancelled", "rejected"].includes(s)) return s;
    return "";
  }

  function reasonOf(o) {
    return o.result_reason || o.refusal_code || o.failure_reason || "";
  }

  function isActive(o) {
    return ["received", "validated", "dispatched", "delivered"].includes(o.state);
  }

  // State and outcome are two things: the state says where the order is in its life
  // (outlined badge: running or ended), the outcome how it ended (filled, coloured).
  function stateClass(state) {
    if (!state) return "state";
    return isActive({ state }) ? "state running" : "state ended";
  }

  function stateText(state) {
    return String(state || "").replace(/_/g, " ");
  }

  function outcomeClass(outcome) {
    if (outcome === "armed") return "armed";
    if (["connected", "disconnected"].includes(outcome)) return "ok";
    if (["failed", "rejected"].includes(outcome)) return "bad";
    if (outcome === "expired") return "warn";
    return "";
  }

  function badge(text, cls) {
    return el("span", { class: "st " + (cls || ""), text: text || "" });
  }

  // -------------------------------------------------------------- transport
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function getJSON(path) {
    const response = await fetch(path, {
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
      cache: "no-store",
    });
    if (!response.ok) {
      let message = response.statusText;
      try {
        const body = await response.json();
        message = body.detail || body.message || body.error || message;
        if (typeof message !== "string") message = JSON.stringify(message);
      } catch (_e) {
        /* not JSON */
      }
      throw new ApiError(response.status, message);
    }
    return response.json();
  }

  async function optional(path) {
    try {
      return await getJSON(path);
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return null;
      throw err;
    }
  }

  // ---------------------------------------------------------------- renders
  function renderTiles(orders, concentrators, workorders, stats) {
    const local = {
      total: orders.length,
      active: orders.filter(isActive).length,
      ok: orders.filter((o) => ["connected", "disconnected", "armed"].includes(outcomeOf(o))).length,
      bad: orders.filter((o) => ["failed", "expired"].includes(outcomeOf(o))).length,
      rejected: orders.filter((o) => outcomeOf(o) === "rejected").length,
    };
    const s = stats || {};
    const pick = (v, fallback) => (typeof v === "number" ? v : fallback);
    const online = pick(s.concentrators_online, concentrators.filter((c) => c.online).length);
    const known = pick(s.concentrators_total, concentrators.length);
    const tiles = [
      ["tile-total", pick(s.orders_total, local.total), "orders"],
      ["tile-active", pick(s.active, local.active), "in progress"],
      ["tile-ok", pick(s.succeeded, local.ok), "done remotely"],
      ["tile-bad", pick(s.failed, local.bad), "failed / expired"],
      ["tile-rejected", pick(s.rejected, local.rejected), "rejected at validation"],
      ["tile-conc", online + " / " + known, "concentrators online"],
      ["tile-wo", pick(s.work_orders_open, workorders.filter((w) => w.status === "open").length), "open work orders"],
      ["tile-legacy", pick(s.legacy_given_up, 0), "results Legacy never took"],
      ["tile-alarms", pick(s.relay_alarms_active, 0), "relay alarms"],
      ["tile-incidents", pick(s.incidents_active, 0), "open incidents"],
    ];
    $("#tiles").replaceChildren(
      ...tiles.map(([id, n, label]) => el("div", { class: "tile", id }, el("div", { class: "n", text: String(n) }), el("div", { class: "l", text: label })))
    );
  }

  function orderMatches(o) {
    const text = $("#filter-text").value.trim().toLowerCase();
    const which = $("#filter-state").value;
    if (which === "active" && !isActive(o)) return false;
    if (which === "ended" && isActive(o)) return false;
    if (which === "failed" && !["failed", "expired"].includes(outcomeOf(o))) return false;
    if (!text) return true;
    const hay = [o.id, o.meter_id, o.action, o.state, o.reason, reasonOf(o), o.concentrator_id]
      .join(" ")
      .toLowerCase();
    return hay.includes(text);
  }

  function renderOrders(orders) {
    const rows = orders.filter(orderMatches).map((o) => {
      const outcome = outcomeOf(o);
      const tr = el(
        "tr",
        {
          "data-order-id": o.id,
          class: o.id === selectedId ? "selected" : null,
          tabindex: "0",
          onclick: (e) => {
            if (e.target.closest("a")) return; // the link sets the fragment itself
            selectOrder(o.id);
          },
          onkeydown: (e) => {
            if (e.key === "Enter" || e.key === " ") {
              e.preventDefault();
              selectOrder(o.id);
            }
          },
          title: "open the timeline of " + o.id,
        },
        el("td", { text: fmtTime(o.created_at) }),
        el("td", { class: "mono" }, el("a", { href: "#order=" + o.id, class: "order-link", title: "link to the timeline of " + o.id, text: String(o.id).slice(0, 8) })),
        el("td", { class: "mono", text: o.meter_id }),
        el("td", { title: o.reason || "" }, o.action || "", el("div", { class: "sub", text: o.reason || "" })),
        el("td", { class: "wrap" }, badge(stateText(o.state), stateClass(o.state))),
        el(
          "td",
          {},
          outcome
            ? badge(outcome, outcomeClass(outcome))
            : o.needs_approval && !o.approved_by && isActive(o)
              ? badge("awaiting approval", "warn")
              : ""
        ),
        el("td", { class: "wrap", text: reasonOf(o) }),
        el("td", { text: o.attempts === undefined || o.attempts === null ? "" : String(o.attempts) })
      );
      return tr;
    });
    $("#orders tbody").replaceChildren(...rows);
    $("#orders-note").textContent =
      rows.length === 0
        ? "No orders to show."
        : rows.length + " shown of the " + orders.length + " newest orders (the tiles count all).";
  }

  function stepOfEvent(ev) {
    const n = Number(ev.step);
    return Number.isFinite(n) ? n : 0;
  }

  function renderDetail(order) {
    const events = listOf(order.events || order.timeline || [], "events", "timeline");
    const byStep = new Map();
    for (const ev of events) {
      const n = stepOfEvent(ev);
      if (!byStep.has(n)) byStep.set(n, []);
      byStep.get(n).push(ev);
    }
    const ended = !isActive(order);
    const facts = el(
      "dl",
      { class: "facts" },
      el("dt", { text: "order" }), el("dd", { class: "mono", id: "detail-order-id", text: order.id }),
      el("dt", { text: "meter" }), el("dd", { class: "mono", text: order.meter_id || "" }),
      el("dt", { text: "concentrator" }), el("dd", { class: "mono", text: order.concentrator_id || "—" }),
      el("dt", { text: "action · reason" }), el("dd", { text: (order.action || "") + " · " + (order.reason || "") }),
      el("dt", { text: "state" }), el("dd", {}, badge(stateText(order.state), stateClass(order.state))),
      el("dt", { text: "outcome" }), el("dd", {}, outcomeOf(order) ? badge(outcomeOf(order), outcomeClass(outcomeOf(order))) : "—"),
      reasonOf(order) ? [el("dt", { text: "reason code" }), el("dd", { class: "mono", text: reasonOf(order) })] : null,
      el("dt", { text: "link" }), el("dd", {}, el("a", { href: "#order=" + order.id, text: "#order=" + String(order.id).slice(0, 8) + "…" })),
      order.refusal_detail || order.result_detail
        ? [el("dt", { text: "detail" }), el("dd", { class: "wrap", text: order.refusal_detail || order.result_detail })]
        : null,
      order.energy_value !== undefined && order.energy_value !== null
        ? [el("dt", { text: "energy" }), el("dd", { text: order.energy_value + " " + (order.energy_unit || "") })]
        : null,
      el("dt", { text: "attempts" }), el("dd", { text: String(order.attempts ?? "") }),
      el("dt", { text: "source" }), el("dd", { text: (order.source || "") + (order.created_by ? " by " + order.created_by : "") })
    );
    // Steps 5-7 are recorded from the agent's receipt and the attempts in its result
    // (step 7: attempts that failed and were retried; step 6: the last attempt).
    // What is left unsaid is told here.
    const attempted = (byStep.get(6) || []).length > 0;
    const implied = {
      // Step 1 happened if the order exists; what it was is on the order itself.
      1: order.source && order.source !== "soap"
        ? "created through the " + order.source.toUpperCase() + " API by " + (order.created_by || "?") + ": no SOAP message"
        : "SOAP CreateEndDeviceControls from " + (order.issuer_id || "Legacy") +
          (order.correlation_id ? " · CorrelationID " + order.correlation_id : "") +
          (order.external_ref ? " · issuerTrackingID " + order.external_ref : ""),
      7: attempted ? "no retry needed" : "",
      9: ended ? "waiting for delivery to Legacy" : "",
      10: ended && !["failed", "expired"].includes(outcomeOf(order)) ? "not needed" : "",
    };
    // An attempt event's detail reads "attempt N: ok ..." or "attempt N: <reason> ...".
    const failedAttempt = (e) =>
      String(e.event || "") === "attempt" && !/^attempt \d+: ok\b/.test(String(e.detail || ""));
    const items = STEPS.map(([n, title, what]) => {
      const evs = byStep.get(n) || [];
      // A step went wrong when one of its events is a refusal or failure, moved the
      // order into such a state (notes keep the state and do not count), or is the
      // meter's final answer and that answer was a KO.
      const bad = evs.some(
        (e) =>
          BAD_EVENTS.has(String(e.event || "").toLowerCase()) ||
          (e.from_state !== e.to_state && BAD_EVENTS.has(String(e.to_state || ""))) ||
          failedAttempt(e)
      );
      const cls = evs.length
        ? (bad ? "bad" : "done")
        : n === 1
          ? "done"
          : implied[n] && n === 7
            ? "implied"
            : ended
              ? "skip"
              : "";
      return el(
        "li",
        { class: cls, "data-step": String(n) },
        el("span", { class: "dot", text: String(n) }),
        el(
          "div",
          {},
          el("div", { class: "title", text: title }),
          evs.length
            ? evs.map((e) =>
                el(
                  "div",
                  { class: "ev" },
                  fmtTime(e.at || e.time || e.created_at) + " · ",
                  el("b", { text: e.label || e.event || "" }),
                  e.from_state || e.to_state ? " " + (e.from_state || "∅") + " → " + (e.to_state || "") : "",
                  e.actor ? " · " + e.actor : "",
                  e.detail ? " · " + (typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail)) : ""
                )
              )
            : el("div", { class: "ev", text: implied[n] || what })
        )
      );
    });
    const extra = events.filter((e) => !(stepOfEvent(e) >= 1 && stepOfEvent(e) <= 10));
    // Every event in the order it happened (as recorded), labelled by what it holds,
    // with who did it; the ten steps above group the same events by the brief's step.
    const historyItems = events.map((e) =>
      el(
        "li",
        { "data-event": e.event || "", "data-step": String(stepOfEvent(e)) },
        el("span", { class: "when", text: fmtTime(e.at || e.time || e.created_at) }),
        el("span", { class: "stepno", text: String(stepOfEvent(e)) }),
        el("span", {}, el("b", { text: e.label || e.event || "" }), e.actor ? " · " + e.actor : "",
          e.detail ? " · " + (typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail)) : "")
      )
    );
    $("#detail").replaceChildren(
      ...[
        facts,
        el("ol", { class: "steps", id: "timeline" }, items),
        el("h3", { text: "What happened, in order" }),
        el("ol", { class: "history", id: "history" }, historyItems),
        extra.length ? el("p", { class: "hint", text: extra.length + " event(s) outside the ten steps." }) : null,
      ].filter(Boolean)
    );
    $("#detail-close").hidden = false;
  }

  function renderConcentrators(concs) {
    if (!concs.length) {
      $("#concentrators").replaceChildren(el("p", { class: "hint", text: "No concentrators registered." }));
      return;
    }
    const maxQ = Math.max(10, ...concs.map((c) => Number(c.queue_depth || 0)));
    const cards = concs.map((c) => {
      const q = Number(c.queue_depth || 0);
      const state = c.decommissioned ? "decommissioned" : c.online ? "online" : "offline";
      return el(
        "div",
        { class: "conc " + (c.online ? "online" : "offline"), "data-concentrator": c.id },
        el("div", { class: "id", text: c.id }),
        el("div", { class: "q" }, badge(state, c.online ? "ok" : "bad"), c.alarm ? badge("signature alarm", "bad") : null),
        el("div", { class: "q", text: "queue " + q + (c.outbox_depth ? " · outbox " + c.outbox_depth : "") + (c.inflight !== undefined ? " · in flight " + c.inflight : "") }),
        el("div", { class: "bar" }, el("span", { style: "width:" + Math.round((100 * q) / maxQ) + "%" })),
        el("div", { class: "q", text: c.status_at ? "seen " + fmtTime(c.status_at) : "never seen" })
      );
    });
    $("#concentrators").replaceChildren(el("div", { class: "concs" }, cards));
  }

  // Messages an agent could not verify (issue 11): never an order's end, always shown.
  function renderSecurity(stats) {
    const events = stats && Array.isArray(stats.security_events) ? stats.security_events : [];
    const rows = events.map((e) =>
      el(
        "tr",
        {},
        el("td", { text: String(e.id) }),
        el("td", { text: fmtTime(e.received_at, true) }),
        el("td", { class: "mono", text: e.concentrator_id || "" }),
        el("td", { class: "wrap" }, badge(e.alarm ? "alarm" : "refused", e.alarm ? "bad" : "warn"), " " + e.reason)
      )
    );
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "4", class: "hint", text: "No refused messages." })));
    $("#security tbody").replaceChildren(...rows);
  }

  // Relay truth (issue 16): urgent alarms on top of the page, then all active alarms
  // and incidents.
  function renderRelay(stats) {
    const list = stats && Array.isArray(stats.relay_alarms) ? stats.relay_alarms : [];
    const urgent = list.filter((a) => a.severity === "urgent");
    const banner = $("#urgent");
    banner.hidden = urgent.length === 0;
    banner.replaceChildren(
      ...urgent.map((a) =>
        el("div", { class: "urgent-line" },
          badge("URGENT", "bad"),
          " protected customer " + a.meter_id + " seen disconnected without an order · " +
            (a.order_id ? "reconnect " + String(a.order_id).slice(0, 8) + " waits for approval" : "no reconnect proposed"))
      )
    );
    const rows = list.map((a) =>
      el(
        "tr",
        {},
        el("td", { text: String(a.id) }),
        el("td", { text: fmtTime(a.raised_at, true) }),
        el("td", {}, badge(a.severity, a.severity === "normal" ? "warn" : "bad")),
        el("td", { class: "mono", text: a.meter_id }),
        el("td", { class: "mono", text: a.concentrator_id || "" }),
        el("td", { class: "wrap", text: a.kind + " · " + a.detail }),
        el("td", { text: a.work_order_id ? "WO-" + a.work_order_id : "" }),
        el("td", {}, badge(a.status, a.status === "open" ? "bad" : "warn"))
      )
    );
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "8", class: "hint", text: "No relay alarms." })));
    $("#relay-alarms tbody").replaceChildren(...rows);
    const incs = stats && Array.isArray(stats.incidents) ? stats.incidents : [];
    const irows = incs.map((i) =>
      el(
        "tr",
        {},
        el("td", { text: "#" + i.id }),
        el("td", { class: "mono", text: i.group_kind + " " + i.group_key }),
        el("td", { text: String(i.meters) }),
        el("td", { text: fmtTime(i.first_event_at, true) }),
        el("td", { text: fmtTime(i.last_event_at, true) }),
        el("td", {}, badge(i.status, i.status === "open" ? "bad" : "warn")),
        el("td", { class: "mono", text: i.restore_batch_id ? "batch " + String(i.restore_batch_id).slice(0, 8) : "" })
      )
    );
    if (!irows.length) irows.push(el("tr", {}, el("td", { colspan: "7", class: "hint", text: "No open incidents." })));
    $("#incidents tbody").replaceChildren(...irows);
  }

  function renderWorkOrders(wos) {
    const newest = wos.slice().sort((a, b) => Number(b.id) - Number(a.id));
    const rows = newest.map((w) =>
      el(
        "tr",
        {},
        el("td", { text: String(w.id) }),
        el("td", { text: fmtTime(w.created_at, true) }),
        el("td", { class: "mono", text: w.meter_id }),
        el("td", { class: "mono", text: w.concentrator_id || "" }),
        el("td", { text: w.action }),
        el("td", { class: "wrap", text: w.reason + (w.detail ? " · " + w.detail : "") }),
        el("td", { class: "wrap where" },
          [w.service_address, w.comuna, w.region].filter(Boolean).join(", ") || "—",
          w.latitude !== null && w.latitude !== undefined && w.longitude !== null && w.longitude !== undefined
            ? el("div", { class: "sub mono", text: "GPS " + w.latitude + ", " + w.longitude })
            : null),
        el("td", { class: "wrap", text: [w.customer_ref, w.access_notes].filter(Boolean).join(" · ") }),
        el("td", { text: w.last_relay_state || "" }),
        el("td", {}, badge(w.status, w.status === "open" ? "warn" : "ok")),
        w.order_id
          ? el("td", { class: "mono" }, el("a", { href: "#", title: w.order_id, onclick: (e) => { e.preventDefault(); selectOrder(w.order_id); }, text: String(w.order_id).slice(0, 8) }))
          : el("td", { text: (w.kind || "") + (w.alarm_id ? " · alarm " + w.alarm_id : "") })
      )
    );
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "11", class: "hint", text: "No open field work orders." })));
    $("#workorders tbody").replaceChildren(...rows);
  }

  // ----------------------------------------------------------------- charts
  const BUCKETS_S = [5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 86400];

  function pickBucket(spanS) {
    for (const b of BUCKETS_S) if (spanS / b <= 30) return b;
    return BUCKETS_S[BUCKETS_S.length - 1];
  }

  function endedPoints(orders) {
    const points = [];
    for (const o of orders) {
      const outcome = outcomeOf(o);
      if (!outcome) continue;
      const end = parseTime(o.finished_at) ?? parseTime(o.updated_at);
      const start = parseTime(o.created_at);
      if (end === null) continue;
      points.push({ t: end, latency: start === null ? null : Math.max(0, (end - start) / 1000), outcome });
    }
    return points.sort((a, b) => a.t - b.t);
  }

  function axisLabel(t, bucket) {
    const d = new Date(t);
    if (bucket >= 86400) return d.toISOString().slice(5, 10);
    const s = d.toLocaleTimeString([], { hour12: false });
    return bucket >= 60 ? s.slice(0, 5) : s;
  }

  function emptyChart(target, text) {
    target.replaceChildren(el("p", { class: "hint", text }));
  }

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function drawOutcomes(target, points) {
    if (!points.length) return emptyChart(target, "No ended orders yet.");
    const W = 420, H = 190, L = 34, R = 8, T = 8, B = 24;
    const t0 = points[0].t, t1 = points[points.length - 1].t;
    const bucket = pickBucket(Math.max(1, (t1 - t0) / 1000));
    const first = Math.floor(t0 / 1000 / bucket) * bucket;
    const n = Math.floor(t1 / 1000 / bucket) - Math.floor(t0 / 1000 / bucket) + 1;
    const counts = Array.from({ length: n }, () => ({}));
    for (const p of points) {
      const i = Math.floor((p.t / 1000 - first) / bucket);
      counts[i][p.outcome] = (counts[i][p.outcome] || 0) + 1;
    }
    const totals = counts.map((c) => Object.values(c).reduce((a, b) => a + b, 0));
    const ymax = niceMax(Math.max(...totals));
    const bw = (W - L - R) / n;
    const y = (v) => T + (H - T - B) * (1 - v / ymax);
    const parts = [];
    for (const frac of [0, 0.5, 1]) {
      const v = ymax * frac;
      parts.push(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#dde3e8" }));
      parts.push(svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#66727f" }, String(Math.round(v * 10) / 10)));
    }
    counts.forEach((c, i) => {
      let acc = 0;
      const w = Math.max(1, Math.min(bw * 0.76, 36));
      const x = L + i * bw + (bw - w) / 2;
      for (const outcome of OUTCOME_ORDER.concat(Object.keys(c).filter((k) => !OUTCOME_ORDER.includes(k)))) {
        const v = c[outcome] || 0;
        if (!v) continue;
        const rect = svg("rect", { x, y: y(acc + v), width: w, height: y(acc) - y(acc + v), fill: OUTCOME_COLORS[outcome] || "#555" });
        rect.append(svg("title", {}, axisLabel((first + i * bucket) * 1000, bucket) + " " + outcome + ": " + v));
        parts.push(rect);
        acc += v;
      }
    });
    const ticks = Math.min(n, 6);
    for (let k = 0; k < ticks; k++) {
      const i = Math.round((k * (n - 1)) / Math.max(1, ticks - 1));
      parts.push(svg("text", { x: L + (i + 0.5) * bw, y: H - 8, "text-anchor": "middle", "font-size": 11, fill: "#66727f" }, axisLabel((first + i * bucket) * 1000, bucket)));
    }
    const present = OUTCOME_ORDER.filter((k) => points.some((p) => p.outcome === k));
    target.replaceChildren(
      svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "outcomes per " + bucket + " s", id: "svg-outcomes" }, parts),
      el("div", { class: "legend" }, present.map((k) => el("span", {}, el("i", { style: "background:" + OUTCOME_COLORS[k] }), k + " " + points.filter((p) => p.outcome === k).length)), el("span", { text: "per " + fmtSeconds(bucket) }))
    );
  }

  function quantile(sorted, q) {
    if (!sorted.length) return null;
    const pos = (sorted.length - 1) * q;
    const lo = Math.floor(pos), hi = Math.ceil(pos);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
  }

  function drawLatency(target, allPoints) {
    // Rejected and cancelled orders never ran on a meter: their latency says nothing.
    const points = allPoints.filter((p) => p.latency !== null && !["rejected", "cancelled"].includes(p.outcome));
    if (!points.length) return emptyChart(target, "No executed orders yet.");
    const W = 420, H = 190, L = 46, R = 8, T = 8, B = 24;
    const t0 = points[0].t, t1 = points[points.length - 1].t;
    const span = Math.max(1000, t1 - t0);
    const ymax = niceMax(Math.max(...points.map((p) => p.latency)));
    const x = (t) => L + ((W - L - R) * (t - t0)) / span;
    const y = (v) => T + (H - T - B) * (1 - v / ymax);
    const parts = [];
    for (const frac of [0, 0.5, 1]) {
      const v = ymax * frac;
      parts.push(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#dde3e8" }));
      parts.push(svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#66727f" }, fmtSeconds(v)));
    }
    // median per bucket as a line
    const bucket = pickBucket(span / 1000);
    const groups = new Map();
    for (const p of points) {
      const k = Math.floor(p.t / 1000 / bucket);
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k).push(p.latency);
    }
    const med = [...groups.entries()].sort((a, b) => a[0] - b[0]).map(([k, v]) => {
      const sorted = v.slice().sort((a, b) => a - b);
      const mid = Math.min(t1, Math.max(t0, (k + 0.5) * bucket * 1000));
      return [x(mid), y(quantile(sorted, 0.5))];
    });
    for (const p of points) {
      const c = svg("circle", { cx: x(p.t), cy: y(p.latency), r: 3, fill: OUTCOME_COLORS[p.outcome] || "#555", "fill-opacity": 0.75 });
      c.append(svg("title", {}, p.outcome + " " + fmtSeconds(p.latency)));
      parts.push(c);
    }
    if (med.length > 1) parts.push(svg("polyline", { points: med.map((m) => m.join(",")).join(" "), fill: "none", stroke: "#264f78", "stroke-width": 2 }));
    for (const [t, anchor] of [[t0, "start"], [t0 + span / 2, "middle"], [t0 + span, "end"]]) {
      parts.push(svg("text", { x: x(t), y: H - 8, "text-anchor": anchor, "font-size": 11, fill: "#66727f" }, axisLabel(t, bucket)));
    }
    const sorted = points.map((p) => p.latency).sort((a, b) => a - b);
    target.replaceChildren(
      svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "latency of executed orders", id: "svg-latency" }, parts),
      el("div", { class: "legend" },
        el("span", { text: "p50 " + fmtSeconds(quantile(sorted, 0.5)) }),
        el("span", { text: "p95 " + fmtSeconds(quantile(sorted, 0.95)) }),
        el("span", { text: "max " + fmtSeconds(sorted[sorted.length - 1]) }),
        el("span", {}, el("i", { style: "background:#264f78;height:3px" }), "median per " + fmtSeconds(bucket)))
    );
  }

  // ------------------------------------------------------------------- flow
  function setConn(ok, text) {
    const pill = $("#conn");
    pill.className = "pill " + (ok ? "ok" : "bad");
    pill.textContent = text;
  }

  async function selectOrder(id) {
    selectedId = id;
    if (location.hash !== "#order=" + id) history.replaceState(null, "", "#order=" + id);
    document.querySelectorAll("#orders tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.orderId === id));
    await refreshDetail();
  }

  async function refreshDetail() {
    if (!selectedId) return;
    try {
      const order = await getJSON(API.order.replace("{id}", encodeURIComponent(selectedId)));
      const full = (order.order || order).id;
      if (full && full !== selectedId) {
        selectedId = full; // a link may give only the first characters of the id
        document.querySelectorAll("#orders tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.orderId === full));
      }
      renderDetail(order.order ? Object.assign({}, order.order, { events: order.events || order.timeline || order.order.events }) : order);
    } catch (err) {
      $("#detail").replaceChildren(el("p", { class: "error", text: "Order " + selectedId + ": " + err.message }));
    }
  }

  async function refresh() {
    try {
      const sep = API.orders.includes("?") ? "&" : "?";
      const [orders, concs, wos, stats] = await Promise.all([
        getJSON(API.orders + sep + "limit=" + ORDER_LIMIT),
        getJSON(API.concentrators),
        getJSON(API.workorders),
        API.stats ? optional(API.stats) : Promise.resolve(null),
      ]);
      if (stats && Array.isArray(stats.recent)) {
        finalStateOf = new Map(stats.recent.map((r) => [r.id, r.final_state]));
      }
      lastOrders = listOf(orders, "orders");
      const concList = listOf(concs, "concentrators");
      const woList = listOf(wos, "work_orders", "workorders");
      renderTiles(lastOrders, concList, woList, stats);
      renderOrders(lastOrders);
      const alarms = (stats && stats.concentrator_alarms) || {};
      renderConcentrators(concList.map((c) => Object.assign({}, c, { alarm: alarms[c.id] })));
      renderSecurity(stats);
      renderRelay(stats);
      renderWorkOrders(woList);
      const points = endedPoints(stats && Array.isArray(stats.recent) ? stats.recent : lastOrders);
      drawOutcomes($("#chart-outcomes"), points);
      drawLatency($("#chart-latency"), points);
      await refreshDetail();
      setConn(true, "live");
      $("#updated").textContent = "updated " + new Date().toLocaleTimeString([], { hour12: false });
    } catch (err) {
      if (err instanceof ApiError && (err.status === 401 || err.status === 403) && !CONFIG.token) {
        sessionStorage.removeItem(TOKEN_KEY);
        token = "";
        showLogin("The API refused the token (" + err.status + "): " + err.message);
        return;
      }
      setConn(false, err instanceof ApiError ? "API error " + err.status : "coordinator unreachable");
      $("#updated").textContent = err.message;
    }
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function showLogin(message) {
    clearTimeout(timer);
    $("#app").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
    $("#token-input").focus();
  }

  function start() {
    $("#login").hidden = true;
    $("#app").hidden = false;
    refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#refresh-s").textContent = String(REFRESH_MS / 1000);
    $("#login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      token = $("#token-input").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      start();
    });
    $("#filter-text").addEventListener("input", () => renderOrders(lastOrders));
    $("#filter-state").addEventListener("change", () => renderOrders(lastOrders));
    $("#detail-close").addEventListener("click", () => {
      selectedId = null;
      $("#detail").replaceChildren(el("p", { class: "hint", text: "Click an order to see its path through the ten steps." }));
      $("#detail-close").hidden = true;
      renderOrders(lastOrders);
    });
    // A link #order=<id> (or its first characters) opens that order's timeline.
    const fromHash = () => {
      const m = /^#order=([0-9A-Za-z._:-]+)$/.exec(location.hash);
      if (m && m[1] !== selectedId) selectOrder(m[1]);
    };
    window.addEventListener("hashchange", fromHash);
    fromHash();
    if (token) start();
    else showLogin("");
  });
})();
