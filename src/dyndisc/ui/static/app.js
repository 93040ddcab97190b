// The page of `dyndisc ui`: the state the server's event stream (/events) keeps current, and the views
// drawn from it (fleet.js: the tree of instances; timeline.js: what happened; detail.js: one instance;
// views.js: model cards, event channels, entries). No framework and no build step: each view is redrawn
// from the state on every change, which is cheap at the sizes a person reads.
"use strict";

const LINGER_MS = 1000; // a removed instance stays this long, flashing, before it goes

const state = {
  instances: new Map(), // key "ns.comp.ep/<id>" -> instance JSON
  leaving: new Map(), // key -> instance JSON, while it flashes
  leases: {}, // id hex -> seconds left, "gone" (the server no longer knows it), or null (no answer)
  leasesAt: 0, // when the leases were received (ms), for the countdown between updates
  leaseTimes: true, // whether the backend can tell a lease's time left at all
  models: [], // model cards [{endpoint, instance_id, model, lora, ...}] (null: the backend keeps none)
  channels: [], // event channels (null: the backend keeps none)
  history: [], // timeline records, oldest first
  fresh: new Set(), // keys that just arrived (highlighted once)
  status: { stale_for: null, live: 0 },
  backend: "",
  query: "",
  view: "fleet",
  detail: null, // the key of the instance whose details are open
  closed: new Set(), // the tree nodes the user closed (everything starts open)
};
const HISTORY_KEPT = 5000;

const $ = (id) => document.getElementById(id);

function text(tag, value, className) {
  const node = document.createElement(tag);
  node.textContent = value;
  if (className) node.className = className;
  return node;
}

function age(registeredAt) {
  if (!registeredAt) return "-";
  let s = Math.max(0, Math.floor((Date.now() - Date.parse(registeredAt)) / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  s %= 60;
  if (m < 60) return m < 10 && s ? `${m}m${s}s` : `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h${m % 60 ? `${m % 60}m` : ""}`;
  return `${Math.floor(h / 24)}d${h % 24 ? `${h % 24}h` : ""}`;
}

function clock(iso) {
  // Local time of day, to the second: the timeline's stamps (the full time is in the title).
  return new Date(iso).toLocaleTimeString([], { hour12: false });
}

// What the lease column and the detail panel say: seconds left now (counting down between the server's
// answers), "expired" for a lease the server no longer knows, "n/a" where the backend has no lease TTL.
function leaseLeft(id) {
  if (!state.leaseTimes) return { text: "n/a", title: `the ${state.backend} backend has no lease TTL` };
  const left = state.leases[id];
  if (left === "gone") {
    return { text: "expired", className: "lease-gone", title: "the server no longer knows this lease; its record is not deleted yet" };
  }
  if (typeof left !== "number") return { text: "?", title: "the server did not say (yet)" };
  const now = Math.max(0, left - (Date.now() - state.leasesAt) / 1000);
  return { text: `${now.toFixed(1)}s`, className: now < 2 ? "lease-low" : "", seconds: now };
}

function servedBy(instance) {
  return (state.models || []).filter((m) => m.endpoint === instance.endpoint && m.instance_id === instance.instance_id);
}

function render() {
  renderFleet();
  renderTimeline();
  renderDetail();
  renderViews();
  $("where").textContent = `${state.backend} · ${state.query}`;
  $("counts").textContent = `${state.instances.size} live`;
  const stale = $("stale");
  if (state.status.stale_for !== null && state.status.stale_for !== undefined) {
    stale.hidden = false;
    stale.textContent = `STALE for ${Math.round(state.status.stale_for)}s: the watch is disconnected; ` +
      "this is the last view the server gave, and it may be out of date";
  } else {
    stale.hidden = true;
  }
  state.fresh.clear();
}

function apply(event) {
  switch (event.event) {
    case "snapshot": {
      const next = new Map(event.instances.map((i) => [i.key, i]));
      for (const [key, instance] of state.instances) if (!next.has(key)) leave(key, instance);
      for (const key of next.keys()) if (!state.instances.has(key)) state.fresh.add(key);
      state.instances = next;
      state.leases = event.leases || {};
      state.leasesAt = Date.now();
      state.leaseTimes = event.lease_times;
      state.models = event.models;
      state.channels = event.channels;
      state.status = event.status;
      state.backend = event.backend;
      state.query = event.query;
      break;
    }
    case "history":
      state.history = event.reset ? event.records : state.history.concat(event.records);
      if (state.history.length > HISTORY_KEPT) state.history = state.history.slice(-HISTORY_KEPT);
      break;
    case "added":
      if (!state.instances.has(event.instance.key)) state.fresh.add(event.instance.key);
      state.instances.set(event.instance.key, event.instance);
      state.leaving.delete(event.instance.key);
      break;
    case "removed": {
      const gone = state.instances.get(event.key);
      if (gone) {
        state.instances.delete(event.key);
        leave(event.key, gone);
      }
      break;
    }
    case "leases":
      state.leases = event.leases;
      state.leasesAt = Date.now();
      break;
    case "models":
      state.models = event.models;
      break;
    case "channels":
      state.channels = event.channels;
      break;
    case "status":
      state.status = event;
      break;
  }
  render();
}

function leave(key, instance) {
  state.leaving.set(key, instance);
  setTimeout(() => {
    state.leaving.delete(key);
    render();
  }, LINGER_MS);
}

function show(view) {
  state.view = view;
  for (const button of document.querySelectorAll("#tabs button")) {
    if (button.dataset.view === view) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  for (const name of ["fleet", "models", "channels", "entries"]) $(`view-${name}`).hidden = name !== view;
  if (location.hash !== `#${view}`) history.replaceState(null, "", view === "fleet" ? location.pathname : `#${view}`);
  render();
}

function connect() {
  const source = new EventSource("/events");
  source.onmessage = (message) => {
    $("connecting")?.remove();
    apply(JSON.parse(message.data));
  };
  source.onerror = () => {
    // The UI server itself is unreachable: say so; EventSource reconnects by itself.
    state.status = { ...state.status, stale_for: state.status.stale_for ?? 0 };
    render();
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("filter").addEventListener("input", render);
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => show(button.dataset.view));
  }
  setupTimeline();
  setupDetail();
  setupViews();
  const wanted = location.hash.slice(1);
  if (["models", "channels", "entries"].includes(wanted)) show(wanted);
  // The lease countdown and the ages move between the server's updates.
  setInterval(() => { renderLeases(); renderDetailLease(); }, 200);
  connect();
});
