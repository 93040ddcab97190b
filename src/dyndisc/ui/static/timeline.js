// The timeline beside the fleet: what happened lately (joins, leaves and why, readiness changes, lease
// replacements, stale periods), newest first, filtered by text and by kind.
"use strict";

const TIMELINE_SHOWN = 400; // rows drawn at most (the filter reaches the whole history)
const KIND_GROUPS = {
  joined: ["joined"],
  left: ["left"],
  readiness: ["ready", "draining"],
  changed: ["changed"],
  replaced: ["replaced"],
  stale: ["stale", "resumed"],
};
const hiddenKinds = new Set(["started"]);

function setupTimeline() {
  const kinds = $("timeline-kinds");
  for (const [group, members] of Object.entries(KIND_GROUPS)) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.dataset.kind = group;
    box.addEventListener("change", () => {
      for (const kind of members) if (box.checked) hiddenKinds.delete(kind); else hiddenKinds.add(kind);
      renderTimeline();
    });
    label.appendChild(box);
    label.appendChild(document.createTextNode(` ${group}`));
    kinds.appendChild(label);
  }
  $("timeline-filter").addEventListener("input", renderTimeline);
}

function describe(record) {
  // What the record says beyond its kind and instance.
  switch (record.kind) {
    case "started": return `watching ${record.query}: ${record.live} live`;
    case "left": return record.reason || (record.away ? "gone while the watch was away" : "removed");
    case "replaced": return `new lease; was ${record.previous}`;
    case "changed": return (record.fields || []).join(", ");
    case "stale": return "the watch lost its server";
    case "resumed": return `current again after ${record.lasted}s`;
    default: return record.transport || "";
  }
}

function recordItem(record) {
  const li = document.createElement("li");
  li.className = "ev";
  li.dataset.kind = record.kind;
  if (record.key) li.dataset.key = record.key;
  const when = text("span", clock(record.at), "when");
  when.title = record.at;
  li.appendChild(when);
  li.appendChild(text("span", record.kind, `kind kind-${record.kind}`));
  const body = document.createElement("div");
  if (record.key) {
    const what = text("a", `${record.endpoint} ${record.instance_id}`, "what open");
    what.href = "#";
    what.addEventListener("click", (event) => {
      event.preventDefault();
      openDetail(record.key);
    });
    body.appendChild(what);
    body.appendChild(document.createTextNode(" "));
  }
  body.appendChild(text("span", describe(record), "why"));
  li.appendChild(body);
  return li;
}

function timelineMatches(record, needle) {
  if (hiddenKinds.has(record.kind)) return false;
  if (!needle) return true;
  const hay = [record.kind, record.endpoint, record.instance_id, record.previous, record.transport,
    record.reason, describe(record)].filter(Boolean).join(" ").toLowerCase();
  return hay.includes(needle);
}

function renderTimeline() {
  const needle = $("timeline-filter").value.trim().toLowerCase();
  const list = $("events");
  const shown = [];
  for (let n = state.history.length - 1; n >= 0 && shown.length < TIMELINE_SHOWN; n--) {
    if (timelineMatches(state.history[n], needle)) shown.push(state.history[n]);
  }
  list.replaceChildren(...shown.map(recordItem));
  if (!shown.length) list.appendChild(text("li", needle || hiddenKinds.size > 1 ? "nothing matches" : "nothing yet", "muted"));
  $("timeline-count").textContent = `${state.history.length} event${state.history.length === 1 ? "" : "s"}`;
}
