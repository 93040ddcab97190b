// The page of `dyndisc ui`: a live tree of namespaces, components, endpoints and their instances, fed by
// the server's event stream (/events). No framework and no build step: the DOM is redrawn from the state
// on every change, which is cheap at the sizes a person reads.
"use strict";

const LINGER_MS = 1000; // a removed instance stays this long, flashing, before it goes

const state = {
  instances: new Map(), // key "ns.comp.ep/<id>" -> instance JSON
  leaving: new Map(), // key -> instance JSON, while it flashes
  leases: {}, // id hex -> seconds left (null: unknown)
  models: {}, // endpoint -> [{name, lora, instances}] (null: the backend keeps no model cards)
  fresh: new Set(), // keys that just arrived (highlighted once)
  status: { stale_for: null, live: 0 },
  backend: "",
  query: "",
  closed: new Set(), // the tree nodes the user closed (everything starts open)
};

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

function matches(instance, needle) {
  if (!needle) return true;
  const served = ((state.models || {})[instance.endpoint] || [])
    .filter((m) => m.instances.includes(instance.instance_id)).map((m) => m.name);
  const hay = [instance.endpoint, instance.instance_id, instance.transport || "", instance.readiness,
    JSON.stringify(instance.metadata), ...served].join(" ").toLowerCase();
  return hay.includes(needle);
}

function tree(instances) {
  // namespace -> component -> endpoint -> [instances]
  const root = new Map();
  for (const [key, instance] of instances) {
    const [ns, comp, ep] = instance.endpoint.split(".");
    if (!root.has(ns)) root.set(ns, new Map());
    const comps = root.get(ns);
    if (!comps.has(comp)) comps.set(comp, new Map());
    const eps = comps.get(comp);
    if (!eps.has(ep)) eps.set(ep, []);
    eps.get(ep).push([key, instance]);
  }
  return root;
}

function node(className, key, title, count) {
  const details = document.createElement("details");
  details.className = className;
  details.open = !state.closed.has(key);
  details.dataset.key = key;
  details.addEventListener("toggle", () => {
    if (details.open) state.closed.delete(key); else state.closed.add(key);
  });
  const summary = text("summary", title);
  summary.appendChild(text("span", `${count} instance${count === 1 ? "" : "s"}`, "count"));
  details.appendChild(summary);
  return details;
}

function row(key, instance) {
  const tr = document.createElement("tr");
  tr.dataset.key = key;
  tr.dataset.id = instance.instance_id;
  if (state.leaving.has(key)) tr.className = "leaving";
  else if (state.fresh.has(key)) tr.className = "new";
  tr.appendChild(text("td", instance.instance_id, "id"));
  tr.appendChild(text("td", instance.transport || "-"));
  const badge = text("span", instance.readiness, `badge ${instance.readiness}`);
  const readiness = document.createElement("td");
  readiness.className = "readiness";
  readiness.appendChild(badge);
  tr.appendChild(readiness);
  const left = state.leases[instance.instance_id];
  const lease = text("td", left === undefined || left === null ? "-" : `${left.toFixed(1)}s`, "lease");
  if (typeof left === "number" && left < 2) lease.classList.add("lease-low");
  tr.appendChild(lease);
  tr.appendChild(text("td", age(instance.registered_at)));
  const meta = Object.keys(instance.metadata || {}).length ? JSON.stringify(instance.metadata) : "";
  tr.appendChild(text("td", meta, "meta"));
  return tr;
}

function render() {
  const needle = $("filter").value.trim().toLowerCase();
  const shown = new Map();
  for (const [key, instance] of state.instances) if (matches(instance, needle)) shown.set(key, instance);
  for (const [key, instance] of state.leaving) if (matches(instance, needle)) shown.set(key, instance);
  const main = $("fleet");
  main.replaceChildren();
  if (shown.size === 0) {
    main.appendChild(text("p", needle ? "nothing matches the filter" : "no live instance", "muted"));
  }
  const sortedKeys = (m) => [...m.keys()].sort();
  const root = tree(shown);
  for (const ns of sortedKeys(root)) {
    const comps = root.get(ns);
    const nsCount = [...comps.values()].reduce((n, eps) => n + [...eps.values()].reduce((k, l) => k + l.length, 0), 0);
    const nsNode = node("ns", ns, ns, nsCount);
    for (const comp of sortedKeys(comps)) {
      const eps = comps.get(comp);
      const compCount = [...eps.values()].reduce((k, l) => k + l.length, 0);
      const compNode = node("comp", `${ns}.${comp}`, comp, compCount);
      for (const ep of sortedKeys(eps)) {
        const list = eps.get(ep).sort((a, b) => a[1].instance_id.localeCompare(b[1].instance_id));
        const endpoint = `${ns}.${comp}.${ep}`;
        const epNode = node("ep", endpoint, ep, list.length);
        epNode.dataset.endpoint = endpoint;
        const served = (state.models || {})[endpoint] || [];
        if (served.length) {
          const models = document.createElement("p");
          models.className = "models";
          models.appendChild(text("span", "models: ", "muted"));
          for (const model of served) {
            const label = model.lora ? `${model.name} + ${model.lora}` : model.name;
            const count = model.instances.length;
            models.appendChild(text("span", `${label} (${count})`, "model"));
          }
          epNode.appendChild(models);
        }
        const table = document.createElement("table");
        const head = document.createElement("tr");
        for (const h of ["ID", "TRANSPORT", "STATE", "LEASE LEFT", "AGE", "METADATA"]) head.appendChild(text("th", h));
        table.appendChild(head);
        for (const [key, instance] of list) table.appendChild(row(key, instance));
        epNode.appendChild(table);
        compNode.appendChild(epNode);
      }
      nsNode.appendChild(compNode);
    }
    main.appendChild(nsNode);
  }
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
      state.models = event.models;
      state.status = event.status;
      state.backend = event.backend;
      state.query = event.query;
      break;
    }
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
      break;
    case "models":
      state.models = event.models;
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

$("filter").addEventListener("input", render);
connect();
