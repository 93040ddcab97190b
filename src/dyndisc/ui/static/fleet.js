// The fleet: namespaces, components, endpoints and their instances, as a tree of tables.
"use strict";

function matches(instance, needle) {
  if (!needle) return true;
  const served = servedBy(instance).map((m) => m.model);
  const hay = [instance.endpoint, instance.instance_id, instance.transport || "", instance.readiness,
    JSON.stringify(instance.metadata), ...served].join(" ").toLowerCase();
  return hay.includes(needle);
}

function tree(instances) {
  // namespace -> component -> endpoint -> [[key, instance]]
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

function leaseCell(cell, id) {
  const left = leaseLeft(id);
  cell.textContent = left.text;
  cell.className = `lease ${left.className || ""}`.trim();
  if (left.title) cell.title = left.title; else cell.removeAttribute("title");
}

function row(key, instance) {
  const tr = document.createElement("tr");
  tr.dataset.key = key;
  tr.dataset.id = instance.instance_id;
  if (state.leaving.has(key)) tr.className = "leaving";
  else if (state.fresh.has(key)) tr.className = "new";
  const id = document.createElement("td");
  id.className = "id";
  const open = text("a", instance.instance_id, "open");
  open.href = "#";
  id.appendChild(open);
  tr.appendChild(id);
  tr.appendChild(text("td", instance.transport || "-"));
  const readiness = document.createElement("td");
  readiness.className = "readiness";
  readiness.appendChild(text("span", instance.readiness, `badge ${instance.readiness}`));
  tr.appendChild(readiness);
  const lease = document.createElement("td");
  leaseCell(lease, instance.instance_id);
  tr.appendChild(lease);
  tr.appendChild(text("td", age(instance.registered_at), "age"));
  const meta = Object.keys(instance.metadata || {}).length ? JSON.stringify(instance.metadata) : "";
  tr.appendChild(text("td", meta, "meta"));
  tr.addEventListener("click", (event) => {
    event.preventDefault();
    openDetail(key);
  });
  return tr;
}

function modelChips(endpoint) {
  // The models an endpoint serves: name (+ LoRA) and how many of its instances serve it.
  const counts = new Map();
  for (const card of state.models || []) {
    if (card.endpoint !== endpoint) continue;
    const label = card.lora ? `${card.model} + ${card.lora}` : card.model;
    counts.set(label, (counts.get(label) || 0) + 1);
  }
  if (!counts.size) return null;
  const models = document.createElement("p");
  models.className = "models";
  models.appendChild(text("span", "models: ", "muted"));
  for (const label of [...counts.keys()].sort()) models.appendChild(text("span", `${label} (${counts.get(label)})`, "model"));
  return models;
}

function renderFleet() {
  const needle = $("filter").value.trim().toLowerCase();
  const shown = new Map();
  for (const [key, instance] of state.instances) if (matches(instance, needle)) shown.set(key, instance);
  for (const [key, instance] of state.leaving) if (matches(instance, needle)) shown.set(key, instance);
  const main = $("fleet");
  if ($("connecting")) return;
  main.replaceChildren();
  if (shown.size === 0) main.appendChild(text("p", needle ? "nothing matches the filter" : "no live instance", "muted"));
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
        const chips = modelChips(endpoint);
        if (chips) epNode.appendChild(chips);
        const table = document.createElement("table");
        table.className = "instances";
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
}

function renderLeases() {
  // Between redraws: the lease countdown and the ages move on.
  for (const tr of document.querySelectorAll("table.instances tr[data-key]")) {
    const instance = state.instances.get(tr.dataset.key) || state.leaving.get(tr.dataset.key);
    if (!instance) continue;
    leaseCell(tr.querySelector("td.lease"), instance.instance_id);
    tr.querySelector("td.age").textContent = age(instance.registered_at);
  }
}
