// One instance in full: every field of its record, its metadata pretty-printed, the models it serves, its
// lease counting down, and its history (a replaced lease's records count for both ids).
"use strict";

function setupDetail() {
  $("detail-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeDetail();
  });
}

function openDetail(key) {
  state.detail = key;
  renderDetail();
}

function closeDetail() {
  state.detail = null;
  $("detail").hidden = true;
}

function historyOf(key) {
  // A replacement's record belongs to the new id (its key) and to the id it replaced (previous).
  return state.history.filter((r) => r.key === key || (r.previous && `${r.endpoint}/${r.previous}` === key));
}

function field(list, name, value, className) {
  list.appendChild(text("dt", name));
  const dd = typeof value === "string" ? text("dd", value) : document.createElement("dd");
  if (typeof value !== "string") dd.appendChild(value);
  if (className) dd.className = className;
  list.appendChild(dd);
}

function renderDetail() {
  const panel = $("detail");
  const key = state.detail;
  if (!key) {
    panel.hidden = true;
    return;
  }
  const live = state.instances.get(key) || state.leaving.get(key);
  const records = historyOf(key);
  const last = [...records].reverse().find((r) => r.key === key);
  const instance = live || (last && { endpoint: last.endpoint, instance_id: last.instance_id,
    transport: last.transport, readiness: last.readiness, metadata: null, registered_at: null });
  const body = $("detail-body");
  body.replaceChildren();
  panel.hidden = false;
  panel.dataset.key = key;
  if (!instance) {
    body.appendChild(text("p", `${key}: not live, and not in the history`, "muted"));
    return;
  }
  body.appendChild(text("h2", `${instance.endpoint} / ${instance.instance_id}`));
  if (!state.instances.has(key)) {
    const left = [...records].reverse().find((r) => r.kind === "left" && r.key === key);
    const why = left ? ` at ${clock(left.at)} (${describe(left)})` : "";
    body.appendChild(text("p", `gone${why}: the last record seen is shown`, "gone"));
  }
  const fields = document.createElement("dl");
  field(fields, "endpoint", instance.endpoint);
  field(fields, "instance id", instance.instance_id);
  field(fields, "transport", instance.transport || "-");
  field(fields, "state", text("span", instance.readiness || "-", `badge ${instance.readiness}`));
  const lease = text("span", "", "countdown");
  lease.id = "detail-lease";
  field(fields, "lease left", lease);
  const registered = instance.registered_at ? `${instance.registered_at} (${age(instance.registered_at)} ago)` : "-";
  field(fields, "registered", registered);
  field(fields, "device type", instance.device_type || "-");
  field(fields, "codec", instance.request_plane_codec || "-");
  const served = servedBy(instance).map((m) => (m.lora ? `${m.model} + ${m.lora}` : m.model));
  field(fields, "models", served.length ? served.join(", ") : "-");
  body.appendChild(fields);
  if (instance.metadata !== null) {
    body.appendChild(text("h3", "metadata"));
    body.appendChild(text("pre", JSON.stringify(instance.metadata, null, 2), "metadata"));
  }
  body.appendChild(text("h3", `history (${records.length})`));
  const list = document.createElement("ol");
  list.id = "detail-history";
  for (const record of [...records].reverse()) {
    const li = text("li", "");
    li.dataset.kind = record.kind;
    const when = text("span", clock(record.at), "when");
    when.title = record.at;
    li.appendChild(when);
    li.appendChild(text("span", record.kind, `kind kind-${record.kind}`));
    li.appendChild(text("span", describe(record), "why"));
    list.appendChild(li);
  }
  if (!records.length) list.appendChild(text("li", "nothing since the UI started", "muted"));
  body.appendChild(list);
  renderDetailLease();
}

function renderDetailLease() {
  const cell = $("detail-lease");
  if (!cell || !state.detail) return;
  const id = state.detail.split("/")[1];
  const left = state.instances.has(state.detail) ? leaseLeft(id) : { text: "-", title: "not live" };
  cell.textContent = left.text;
  cell.className = `countdown ${left.className || ""}`.trim();
  if (left.title) cell.title = left.title;
}
