// clearml-agent server web pages: live updates by polling small JSON endpoints. Plain
// JavaScript, no framework; every value is inserted as text (or as HTML the server escaped).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const getJSON = async (url) => {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401) { location.reload(); throw new Error("logged out"); }
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  };
  const every = (ms, fn) => {
    let stopped = false;
    const tick = async () => {
      if (stopped) return;
      if (!document.hidden) { try { await fn(); } catch (e) { /* retried on the next tick */ } }
      setTimeout(tick, ms);
    };
    setTimeout(tick, ms);
    return () => { stopped = true; };
  };
  const badge = (status, label) => {
    const s = document.createElement("span");
    s.className = "badge status-" + status;
    s.dataset.status = status;
    s.textContent = label;
    return s;
  };

  // Experiments table: the same query as the page, every 2 s.
  const table = $("experiments");
  if (table) {
    const ids = () => Array.from(table.tBodies[0].rows).map((r) => r.dataset.id);
    every(2000, async () => {
      const data = await getJSON("/web/api/experiments?" + table.dataset.live);
      const shown = ids();
      const now = data.rows.map((r) => r.id);
      if (shown.join() !== now.join()) { $("changed").hidden = false; return; }
      for (const row of data.rows) {
        const tr = table.querySelector('tr[data-id="' + row.id + '"]');
        if (!tr) continue;
        tr.dataset.status = row.status;
        const cell = (c) => tr.querySelector('[data-col="' + c + '"]');
        cell("status").replaceChildren(badge(row.status, row.status_label));
        for (const c of ["queue", "worker", "started", "duration", "updated"]) cell(c).textContent = row[c];
        cell("scalars").innerHTML = row.scalars; // escaped by the server's template
      }
    });
  }

  // Experiment page header: status, worker, duration, every 2 s.
  const head = $("task");
  if (head) {
    const first = head.dataset.status;
    every(2000, async () => {
      const row = await getJSON("/web/api/tasks/" + encodeURIComponent(head.dataset.id) + "/status");
      head.dataset.status = row.status;
      $("task-status").replaceChildren(badge(row.status, row.status_label));
      const d = $("task-duration"); if (d) d.textContent = row.duration;
      if (row.status !== first && !$("status-changed")) {
        const note = document.createElement("div");
        note.id = "status-changed";
        note.className = "flash info";
        note.append("The status is now " + row.status_label + ". ");
        const a = document.createElement("a"); a.href = location.pathname; a.textContent = "Reload for its actions";
        note.append(a);
        head.after(note);
      }
    });
  }

  // Console: pages by cursor, follows the tail, searches the whole log on the server.
  const con = $("console");
  if (con) {
    const base = "/web/api/tasks/" + encodeURIComponent(con.dataset.task) + "/log";
    const pre = $("console-lines"), info = $("console-info"), earlier = $("console-earlier"), later = $("console-later");
    const follow = $("console-follow"), matches = $("console-matches");
    let start = null, end = null, atTail = true, busy = false, total = 0, shown = 0;
    const clean = (msg) => msg.replace(/\x1b\[[0-9;?]*[ -\/]*[@-~]/g, "")
      .split("\n").map((l) => { const parts = l.split("\r").filter((p) => p !== ""); return parts.length ? parts[parts.length - 1] : ""; })
      .join("\n");
    const nodes = (events) => events.map((e) => {
      let t = clean(e.msg); if (!t.endsWith("\n")) t += "\n";
      const s = document.createElement("span"); s.textContent = t; return s;
    });
    const status = () => { info.textContent = shown + " of " + total + " console events loaded" + (atTail ? "" : " (not at the end)"); };
    const toBottom = () => { if (follow.checked && atTail) pre.scrollTop = pre.scrollHeight; };
    const tail = async () => {
      const p = await getJSON(base + "?limit=300");
      pre.replaceChildren(...nodes(p.events));
      start = p.start; end = p.end; total = p.total; shown = p.events.length; atTail = true;
      earlier.hidden = !p.more; later.hidden = true; status(); pre.scrollTop = pre.scrollHeight;
    };
    const loadLater = async () => {
      for (let i = 0; i < 20; i++) {
        const p = await getJSON(base + "?limit=500&after=" + end);
        total = p.total;
        if (p.events.length) { pre.append(...nodes(p.events)); end = p.end; shown += p.events.length; }
        if (!p.more) { atTail = true; later.hidden = true; break; }
        if (!atTail) { later.hidden = false; break; }
      }
      status(); toBottom();
    };
    earlier.addEventListener("click", async () => {
      if (busy) return; busy = true;
      try {
        const p = await getJSON(base + "?limit=500&before=" + start);
        const h = pre.scrollHeight;
        pre.prepend(...nodes(p.events));
        pre.scrollTop += pre.scrollHeight - h;
        start = p.start; shown += p.events.length; total = p.total;
        earlier.hidden = !p.more; status();
      } finally { busy = false; }
    });
    later.addEventListener("click", async () => { if (busy) return; busy = true; atTail = false; try { await loadLater(); } finally { busy = false; } });
    const jump = async (at) => {
      busy = true;
      try {
        const p = await getJSON(base + "?limit=500&after=" + at);
        const ns = nodes(p.events);
        if (ns.length) { const m = document.createElement("mark"); m.append(ns[0].textContent); ns[0].replaceChildren(m); }
        pre.replaceChildren(...ns);
        start = at; end = p.end; total = p.total; shown = p.events.length; atTail = !p.more;
        earlier.hidden = at === "0.0"; later.hidden = !p.more; pre.scrollTop = 0; status();
      } finally { busy = false; }
    };
    $("console-search").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const q = ev.target.q.value.trim();
      if (!q) { matches.hidden = true; await tail(); return; }
      const r = await getJSON(base + "/search?q=" + encodeURIComponent(q));
      matches.replaceChildren();
      const head = document.createElement("div");
      head.className = "muted";
      head.textContent = r.matches.length + (r.truncated ? "+" : "") + " matching lines";
      matches.append(head);
      for (const m of r.matches) {
        const a = document.createElement("a"); a.href = "#"; a.textContent = m.line;
        a.addEventListener("click", (e) => { e.preventDefault(); jump(m.at); });
        matches.append(a);
      }
      matches.hidden = false;
    });
    tail().then(() => every(1500, async () => { if (atTail && !busy) { busy = true; try { await loadLater(); } finally { busy = false; } } }));
  }

  // Queues and workers: the live part of the page is fetched again every few seconds.
  document.querySelectorAll("[data-refresh]").forEach((el) => {
    every(Number(el.dataset.refresh) || 3000, async () => {
      if (el.contains(document.activeElement) && document.activeElement !== document.body) return;
      const r = await fetch(location.href, { credentials: "same-origin" });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.getElementById(el.id);
      if (fresh) el.replaceChildren(...fresh.childNodes);
    });
  });
})();
