// Model deployment cards, event channels and any bucket's entries, each a view of its own.
"use strict";

function table(headers, rows) {
  const node = document.createElement("table");
  const head = document.createElement("tr");
  for (const h of headers) head.appendChild(text("th", h));
  node.appendChild(head);
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      if (cell instanceof Node) {
        const td = document.createElement("td");
        td.appendChild(cell);
        tr.appendChild(td);
      } else {
        tr.appendChild(text("td", cell ?? "-"));
      }
    }
    node.appendChild(tr);
  }
  return node;
}

function folded(label, value) {
  // A JSON value behind a summary, pretty-printed when opened.
  const details = document.createElement("details");
  details.appendChild(text("summary", label));
  details.appendChild(text("pre", JSON.stringify(value, null, 2)));
  return details;
}

function byNeedle(items) {
  const needle = $("filter").value.trim().toLowerCase();
  return needle ? items.filter((item) => JSON.stringify(item).toLowerCase().includes(needle)) : items;
}

function renderViews() {
  const models = $("models-table");
  if (state.models === null) {
    models.replaceChildren(text("p", `the ${state.backend} backend keeps no model cards`, "muted"));
  } else {
    const rows = byNeedle(state.models).map((m) => [m.model, m.lora, m.endpoint, m.instance_id, m.model_type,
      m.model_input, folded("card", m.card)]);
    models.replaceChildren(rows.length ? table(["MODEL", "LORA", "ENDPOINT", "INSTANCE", "TYPE", "INPUT", "CARD"], rows)
      : text("p", "no model card", "muted"));
  }
  const channels = $("channels-table");
  if (state.channels === null) {
    channels.replaceChildren(text("p", `the ${state.backend} backend keeps no event channels`, "muted"));
  } else {
    const rows = byNeedle(state.channels).map((c) => [c.topic, c.scope, c.publisher_id, c.address,
      folded("transport", c.transport)]);
    channels.replaceChildren(rows.length ? table(["TOPIC", "SCOPE", "PUBLISHER", "ADDRESS", "TRANSPORT"], rows)
      : text("p", "no event channel", "muted"));
  }
}

async function listEntries() {
  const out = $("entries-table");
  const bucket = $("entries-bucket").value.trim();
  const prefix = $("entries-prefix").value.trim();
  out.replaceChildren(text("p", "listing...", "muted"));
  const params = new URLSearchParams({ bucket, prefix });
  const response = await fetch(`/api/entries?${params}`, { credentials: "same-origin" });
  if (!response.ok) {
    out.replaceChildren(text("p", `${response.status}: ${(await response.text()).trim()}`, "gone"));
    return;
  }
  const found = await response.json();
  const rows = found.entries.map((e) => [e.key, `${e.size} B`, folded("value", e.value)]);
  const said = text("p", `${rows.length} entr${rows.length === 1 ? "y" : "ies"} in ${found.bucket}${prefix ? ` under ${prefix}` : ""}`, "muted");
  out.replaceChildren(said);
  if (rows.length) out.appendChild(table(["KEY", "SIZE", "VALUE"], rows));
}

function setupViews() {
  $("entries-form").addEventListener("submit", (event) => {
    event.preventDefault();
    listEntries();
  });
}
