// Siaga operator console: plain JavaScript, no build step. Everything shown comes from the command
// center's HTTP API (docs/commandcenter.md); live changes arrive as server-sent events. Data from the
// API is only ever put into the page as text (textContent), never as HTML.
"use strict";

(() => {
  const KIND_LABELS = {
    general: "General SOS · Umum",
    medical: "Medical · Medis",
    fire: "Fire · Kebakaran",
    crime: "Crime · Kejahatan",
    disaster: "Disaster · Bencana",
  };
  const STATE_LABELS = {
    new: "NEW · not acknowledged",
    acknowledged: "Acknowledged",
    dispatched: "Dispatched",
    resolved: "Resolved",
    false_alarm: "False alarm / prank",
  };
  // Closing as "not an emergency": the incident becomes `resolved` with `referred_to` set.
  const REFER_LABEL = "Bukan darurat — dirujuk ke LAPOR! / Not an emergency — referred to LAPOR!";
  const REFERRAL_CHANNEL = "LAPOR!";
  const stateLabel = (inc) => (inc.referred_to
    ? `Bukan darurat · Not an emergency → ${inc.referred_to}${inc.referral_ref ? ` (${inc.referral_ref})` : ""}`
    : STATE_LABELS[inc.state] || inc.state);
  const STATE_COLORS = {new: "#ef4444", acknowledged: "#f59e0b", dispatched: "#3b82f6"};
  const OPEN = new Set(["new", "acknowledged", "dispatched"]);
  const CLOSED_SHOWN = 30;
  const REMIND_EVERY_MS = 10000; // repeat the alarm sound while anything is unacknowledged
  const MUTE_MS = 120000; // muting is always temporary
  const LOW_BATTERY_MV = 3400;
  const PLUMBING_EVERY_MS = 5000; // how often the gateways' state is asked for (the silence banner)

  const state = {
    me: null,
    settings: null,
    incidents: new Map(), // id -> incident as the API returns it
    rows: new Map(), // id -> <li>
    seenSinceHello: new Set(),
    selected: null,
    offsetMs: 0, // server clock - browser clock
    es: null,
    map: null,
    markers: new Map(),
    tilesFailed: false,
    fitted: false,
    audio: null,
    muteUntil: 0,
    lastAlarmSound: 0,
    sounds: 0,
    started: false,
    ticker: null,
  };

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // ---- HTTP -------------------------------------------------------------------------------------

  async function api(method, path, body, {signInOn401 = true} = {}) {
    const headers = {Accept: "application/json"};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && state.me && state.me.csrf_token) headers["X-CSRF-Token"] = state.me.csrf_token;
    const resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
    if (!resp.ok) {
      let detail = resp.statusText;
      try {
        const j = await resp.json();
        detail = typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail);
      } catch (_) { /* not JSON */ }
      if (resp.status === 401 && signInOn401) showLogin("Your session has ended. Please sign in again.");
      throw new ApiError(resp.status, detail);
    }
    return resp.status === 204 ? null : resp.json();
  }

  // ---- formatting -------------------------------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function serverNow() {
    return Date.now() + state.offsetMs;
  }

  function fmtElapsed(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    const m = Math.floor(s / 60);
    if (m < 48 * 60) return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
    return `${Math.floor(m / 1440)} days`;
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(Math.round(s % 60)).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }

  function fmtTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
      hourCycle: "h23",
    });
  }

  function kindLabel(kind) {
    return KIND_LABELS[kind] || kind.toUpperCase();
  }

  function agencyName(id) {
    const a = (state.settings && state.settings.agencies || []).find((x) => x.id === id);
    return a ? a.name : id;
  }

  function numberOf(id) {
    return parseInt(id.slice(4), 10);
  }

  function toast(message, bad = false) {
    const t = $("toast");
    t.textContent = message;
    t.className = bad ? "toast toast-bad" : "toast";
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
  }

  // ---- sign-in ----------------------------------------------------------------------------------

  function showLogin(message) {
    if (state.es) { state.es.close(); state.es = null; }
    $("app").hidden = true;
    $("login").hidden = false;
    const err = $("login-error");
    err.hidden = !message;
    err.textContent = message || "";
    $("login-name").focus();
  }

  async function onLogin(ev) {
    ev.preventDefault();
    ensureAudio(); // a click: the browser now lets the page make sound
    const name = $("login-name").value.trim();
    const token = $("login-token").value.trim();
    try {
      state.me = await api("POST", "/api/v1/session", {name, token}, {signInOn401: false});
    } catch (e) {
      const err = $("login-error");
      err.hidden = false;
      err.textContent = e.status === 401 ? "Unknown name or wrong token." : `Sign-in failed: ${e.message}`;
      return;
    }
    $("login-token").value = "";
    await start();
  }

  async function onLogout() {
    try { await api("DELETE", "/api/v1/session"); } catch (_) { /* signed out either way */ }
    state.me = null;
    location.reload();
  }

  // ---- start ------------------------------------------------------------------------------------

  async function start() {
    state.settings = await api("GET", "/api/v1/console/settings");
    state.offsetMs = Date.parse(state.settings.server_time) - Date.now();
    $("login").hidden = true;
    $("app").hidden = false;
    const me = state.me;
    $("who").textContent = `${me.name} · ${me.role}${me.agency ? ` (${agencyName(me.agency)})` : ""}`;
    document.body.dataset.role = me.role;
    document.querySelector('[data-view="devices"]').hidden = me.role === "agency";
    document.querySelector('[data-view="supervisor"]').hidden = me.role !== "supervisor";
    if (me.role === "agency") {
      const note = $("agency-note");
      note.hidden = false;
      note.textContent = `Showing incidents dispatched to ${agencyName(me.agency)}. View only.`;
    }
    if (!state.started) {
      state.started = true;
      initMap();
      state.ticker = setInterval(tick, 1000);
      tick();
      setInterval(loadPlumbing, PLUMBING_EVERY_MS);
    }
    loadPlumbing();
    connect();
  }

  // ---- live updates -----------------------------------------------------------------------------

  function setConnected(ok) {
    const c = $("conn");
    c.textContent = ok ? "● Live" : "● Reconnecting…";
    c.className = ok ? "conn conn-up" : "conn conn-down";
    document.body.dataset.live = ok ? "1" : "0";
  }

  function connect() {
    if (state.es) state.es.close();
    const es = new EventSource("/api/v1/events");
    state.es = es;
    es.addEventListener("hello", (ev) => {
      const hello = JSON.parse(ev.data);
      state.offsetMs = Date.parse(hello.server_time) - Date.now();
      state.seenSinceHello = new Set();
      setConnected(true);
      resync().catch((e) => toast(`Could not load incidents: ${e.message}`, true));
    });
    es.addEventListener("incident", (ev) => onIncident(JSON.parse(ev.data), false));
    es.addEventListener("escalation", (ev) => onIncident(JSON.parse(ev.data), true));
    es.addEventListener("fault", (ev) => onFault(JSON.parse(ev.data)));
    es.onerror = () => {
      setConnected(false);
      if (es.readyState === EventSource.CLOSED && state.es === es) {
        // The browser gives up after a non-200 answer (e.g. the session expired): find out why.
        setTimeout(async () => {
          if (state.es !== es) return;
          try {
            await api("GET", "/api/v1/session");
            connect();
          } catch (e) {
            if (e.status !== 401) setTimeout(connect, 2000);
          }
        }, 2000);
      }
    };
  }

  async function resync() {
    const [open, closed] = await Promise.all([
      api("GET", "/api/v1/incidents?state=new&state=acknowledged&state=dispatched&limit=1000"),
      api("GET", `/api/v1/incidents?state=resolved&state=false_alarm&limit=${CLOSED_SHOWN}`),
    ]);
    const fresh = new Map();
    for (const inc of [...open, ...closed]) fresh.set(inc.id, inc);
    // Changes that arrived on the stream while the lists were fetched may be newer than the lists.
    for (const id of state.seenSinceHello) {
      const mine = state.incidents.get(id);
      const theirs = fresh.get(id);
      if (mine && (!theirs || mine.updated_at > theirs.updated_at)) fresh.set(id, mine);
    }
    const before = new Set(state.incidents.keys());
    state.incidents = fresh;
    const arrived = open.filter((i) => i.state === "new" && !before.has(i.id));
    render();
    if (arrived.length) alarm(arrived.some((i) => i.escalated_at) ? "escalation" : "new-alarm");
    if (!state.fitted) fitMap();
    if (state.selected) showDetail(state.selected);
  }

  function onIncident(inc, escalation) {
    const known = state.incidents.get(inc.id);
    state.seenSinceHello.add(inc.id);
    if (known && known.updated_at > inc.updated_at) return; // an older copy
    state.incidents.set(inc.id, inc);
    render();
    if (escalation) {
      alarm("escalation");
      toast(`${inc.id} ESCALATED: not acknowledged in time`, true);
    } else if (!known && inc.state === "new") {
      alarm("new-alarm");
      flashRow(inc.id);
    } else if (known && inc.state === "new" && inc.press_count > known.press_count) {
      alarm("new-alarm");
      flashRow(inc.id);
    }
    if (state.selected === inc.id) showDetail(inc.id);
  }

  // Fault reports can come by the thousand (a power cut: every button's last will). They are
  // gathered for a moment: a few are toasted one by one, a wave as one line, and the fault list is
  // fetched once per wave.
  const FAULT_WHAT = {offline: "offline", low_battery: "battery low", tamper: "tamper switch open",
                      bad_message: "sent a message the gateway refused", undelivered: "ALARM NOT DELIVERED"};
  let faultWave = [];
  let faultTimer = null;

  function onFault(f) {
    if (state.me.role === "agency") return;
    faultWave.push(f);
    if (f.fault === "undelivered" && f.active) alarm("new-alarm");  // an alarm that missed the list
    if (faultTimer === null) faultTimer = setTimeout(showFaultWave, 300);
  }

  function showFaultWave() {
    const wave = faultWave;
    faultWave = [];
    faultTimer = null;
    if (wave.length <= 3) {
      for (const f of wave) {
        const what = FAULT_WHAT[f.fault] || f.fault;
        toast(f.active ? `Device ${f.device_id}: ${what}` : `Device ${f.device_id}: ${what} cleared`, f.active);
      }
    } else {
      const active = wave.filter((f) => f.active).length;
      toast(`${active} device faults reported, ${wave.length - active} cleared`, active > 0);
    }
    if (!$("view-devices").hidden) loadFaults();
  }

  // ---- the incident list ------------------------------------------------------------------------

  function openOrder(a, b) {
    const rank = (i) => (i.state === "new" ? 0 : 1);
    return rank(a) - rank(b) || numberOf(b.id) - numberOf(a.id);
  }

  function render() {
    const all = [...state.incidents.values()];
    const open = all.filter((i) => OPEN.has(i.state)).sort(openOrder);
    const closed = all
      .filter((i) => !OPEN.has(i.state))
      .sort((a, b) => (b.closed_at || "").localeCompare(a.closed_at || ""))
      .slice(0, CLOSED_SHOWN);
    syncList($("incident-list"), open);
    syncList($("closed-list"), closed);
    const shown = new Set([...open, ...closed].map((i) => i.id));
    for (const [id, row] of state.rows) {
      if (!shown.has(id)) { row.remove(); state.rows.delete(id); }
    }
    $("empty-open").hidden = open.length > 0;
    const fresh = open.filter((i) => i.state === "new");
    const escalated = fresh.filter((i) => i.escalated_at);
    $("count-new").textContent = fresh.length;
    $("count-escalated").textContent = escalated.length;
    $("count-open").textContent = open.length - fresh.length;
    const banner = $("alert-banner");
    banner.hidden = fresh.length === 0;
    banner.className = escalated.length ? "alert-banner alert-escalated" : "alert-banner";
    banner.textContent = escalated.length
      ? `${escalated.length} ESCALATED · ${fresh.length} alarm${fresh.length > 1 ? "s" : ""} not acknowledged`
      : `${fresh.length} alarm${fresh.length > 1 ? "s" : ""} not acknowledged · segera tangani`;
    document.body.dataset.unacknowledged = String(fresh.length);
    updateMarkers(open);
  }

  function syncList(ol, items) {
    items.forEach((inc, index) => {
      let row = state.rows.get(inc.id);
      if (!row) {
        row = buildRow(inc.id);
        state.rows.set(inc.id, row);
      }
      updateRow(row, inc);
      if (ol.children[index] !== row) ol.insertBefore(row, ol.children[index] || null);
    });
    while (ol.children.length > items.length) ol.lastElementChild.remove();
  }

  function buildRow(id) {
    const li = el("li", "incident");
    li.dataset.id = id;
    li.setAttribute("data-testid", `incident-${id}`);
    const main = el("div", "row-main");
    const head = el("div", "row-head");
    for (const cls of ["kind", "inc-id", "state-badge", "escalated-badge", "test-badge", "elapsed"]) {
      head.append(el("span", cls));
    }
    head.querySelector(".escalated-badge").textContent = "ESCALATED";
    head.querySelector(".test-badge").textContent = "TEST";
    head.querySelector(".elapsed").setAttribute("data-testid", "elapsed");
    const where = el("div", "row-where");
    for (const cls of ["address", "area", "coords"]) where.append(el("span", cls));
    const facts = el("div", "row-facts");
    for (const cls of ["presses", "battery", "device", "agency-line", "by-line"]) facts.append(el("span", cls));
    main.append(head, where, facts);
    const actions = el("div", "row-actions");
    li.append(main, actions);
    li.addEventListener("click", (ev) => {
      if (ev.target.closest("button, select, textarea, input, form")) return;
      select(id);
    });
    return li;
  }

  function updateRow(li, inc) {
    const changed = li.dataset.state !== inc.state || li.dataset.escalated !== String(Boolean(inc.escalated_at));
    li.dataset.state = inc.state;
    li.dataset.escalated = String(Boolean(inc.escalated_at));
    li.dataset.created = inc.created_at;
    li.className = `incident state-${inc.state}${inc.escalated_at && inc.state === "new" ? " escalated" : ""}` +
      `${state.selected === inc.id ? " selected" : ""}${inc.test ? " test" : ""}`;
    const q = (cls) => li.querySelector(`.${cls}`);
    const kind = q("kind");
    kind.textContent = kindLabel(inc.kind);
    kind.className = `kind kind-${KIND_LABELS[inc.kind] ? inc.kind : "other"}`;
    q("inc-id").textContent = inc.id;
    q("state-badge").textContent = stateLabel(inc);
    q("escalated-badge").hidden = !(inc.escalated_at && inc.state === "new");
    q("test-badge").hidden = !inc.test;
    q("address").textContent = inc.location.address || "(no address)";
    q("area").textContent = inc.location.area ? `Area ${inc.location.area}` : "";
    q("coords").textContent = `${inc.location.lat.toFixed(5)}, ${inc.location.lon.toFixed(5)}`;
    q("presses").textContent = inc.press_count > 1 ? `Pressed ${inc.press_count}×` : "Pressed once";
    q("presses").classList.toggle("many", inc.press_count > 1);
    const bat = q("battery");
    bat.textContent = inc.battery_mv === null || inc.battery_mv === undefined
      ? "Battery –" : `Battery ${(inc.battery_mv / 1000).toFixed(2)} V`;
    bat.classList.toggle("low", inc.battery_mv !== null && inc.battery_mv < LOW_BATTERY_MV);
    q("device").textContent = inc.sources.length > 1 ? `${inc.device_id} +${inc.sources.length - 1}` : inc.device_id;
    q("agency-line").textContent = inc.agency ? `→ ${agencyName(inc.agency)}` : "";
    q("by-line").textContent = byLine(inc);
    updateElapsed(li, inc);
    if (changed || !li.querySelector(".row-actions").dataset.built) buildActions(li, inc);
  }

  function byLine(inc) {
    if (inc.closed_by) return `closed by ${inc.closed_by}`;
    if (inc.dispatched_by) return `dispatched by ${inc.dispatched_by}`;
    if (inc.acknowledged_by) return `acknowledged by ${inc.acknowledged_by}`;
    return "";
  }

  function updateElapsed(li, inc) {
    const e = li.querySelector(".elapsed");
    const end = OPEN.has(inc.state) ? serverNow() : Date.parse(inc.closed_at);
    const ms = end - Date.parse(inc.created_at);
    e.textContent = OPEN.has(inc.state) ? `${fmtElapsed(ms)} ago` : `took ${fmtElapsed(ms)}`;
  }

  function button(label, cls, action, testid) {
    const b = el("button", `btn ${cls}`, label);
    b.type = "button";
    b.dataset.action = action;
    b.setAttribute("data-testid", testid || action);
    return b;
  }

  function buildActions(li, inc) {
    const box = li.querySelector(".row-actions");
    box.replaceChildren();
    box.dataset.built = "1";
    if (state.me.role === "agency") return;
    const id = inc.id;
    if (inc.state === "new") {
      const ack = button("Acknowledge · Terima", "btn-ack", "acknowledge");
      ack.addEventListener("click", () => act(id, "acknowledge"));
      box.append(ack);
    }
    if (inc.state === "acknowledged") {
      const sel = el("select", "agency-select");
      sel.setAttribute("data-testid", "agency-select");
      sel.setAttribute("aria-label", "Agency");
      for (const a of state.settings.agencies) {
        const o = el("option", null, a.name);
        o.value = a.id;
        sel.append(o);
      }
      sel.value = suggestedAgency(inc.kind);
      const go = button("Dispatch", "btn-dispatch", "dispatch");
      go.addEventListener("click", () => act(id, "dispatch", {agency: sel.value}));
      box.append(sel, go);
    }
    if (inc.state === "acknowledged" || inc.state === "dispatched") {
      const res = button("Resolve", "btn-resolve", "resolve");
      res.addEventListener("click", () => act(id, "resolve"));
      box.append(res);
    }
    if (OPEN.has(inc.state)) {
      const fa = button("False alarm / prank", "btn-false", "false-alarm");
      fa.addEventListener("click", () => {
        // Two steps: closing an alarm as false must never be a slip of the mouse.
        if (fa.dataset.armed) { act(id, "false-alarm"); return; }
        fa.dataset.armed = "1";
        fa.textContent = "Confirm: false alarm?";
        fa.classList.add("armed");
        setTimeout(() => {
          delete fa.dataset.armed;
          fa.textContent = "False alarm / prank";
          fa.classList.remove("armed");
        }, 5000);
      });
      box.append(fa);
      const refer = button(REFER_LABEL, "btn-refer", "refer");
      refer.addEventListener("click", () => toggleReferForm(li, id));
      box.append(refer);
    }
    const note = button("Note", "btn-note", "note");
    note.addEventListener("click", () => toggleNoteForm(li, id));
    box.append(note);
  }

  function suggestedAgency(kind) {
    const ids = state.settings.agencies.map((a) => a.id);
    const guess = {fire: "fire", medical: "ambulance", crime: "police", disaster: "disaster"}[kind];
    return ids.includes(guess) ? guess : ids[0];
  }

  // Not an emergency: the caller is referred to LAPOR! (the city's complaint channel). A small form
  // with the optional ticket number and note, so that it too takes a second, deliberate click.
  function toggleReferForm(li, id) {
    let form = li.querySelector("form.refer-form");
    if (form) { form.remove(); return; }
    form = el("form", "refer-form");
    const ref = el("input");
    ref.maxLength = 100;
    ref.placeholder = "Nomor tiket LAPOR! (opsional) / ticket number (optional)";
    ref.setAttribute("data-testid", "refer-reference");
    const text = el("textarea");
    text.maxLength = 2000;
    text.rows = 2;
    text.placeholder = "Catatan (opsional) / note (optional)";
    text.setAttribute("data-testid", "refer-note");
    const save = el("button", "btn btn-small", "Rujuk / Refer");
    save.type = "submit";
    save.setAttribute("data-testid", "refer-save");
    form.append(ref, text, save);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = {channel: REFERRAL_CHANNEL};
      if (ref.value.trim()) body.reference = ref.value.trim();
      if (text.value.trim()) body.note = text.value.trim();
      save.disabled = true;
      form.remove();
      await act(id, "refer", body);
    });
    li.append(form);
    ref.focus();
  }

  function toggleNoteForm(li, id) {
    let form = li.querySelector("form.note-form");
    if (form) { form.remove(); return; }
    form = el("form", "note-form");
    const text = el("textarea");
    text.maxLength = 2000;
    text.rows = 2;
    text.placeholder = "What was said, who was sent, what was found …";
    text.setAttribute("data-testid", "note-text");
    const save = el("button", "btn btn-small", "Save note");
    save.type = "submit";
    save.setAttribute("data-testid", "note-save");
    form.append(text, save);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const note = text.value.trim();
      if (!note) return;
      save.disabled = true;
      try {
        const inc = await api("POST", `/api/v1/incidents/${id}/notes`, {note});
        form.remove();
        onIncident(inc, false);
        toast(`Note added to ${id}`);
        if (state.selected === id) showDetail(id);
      } catch (e) {
        save.disabled = false;
        toast(`Note not saved: ${e.message}`, true);
      }
    });
    li.append(form);
    text.focus();
  }

  async function act(id, action, body) {
    const row = state.rows.get(id);
    const buttons = row ? row.querySelectorAll(".row-actions button") : [];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const inc = await api("POST", `/api/v1/incidents/${id}/${action}`, body);
      onIncident(inc, false);
      toast(`${id}: ${stateLabel(inc)}${inc.agency && action === "dispatch" ? ` → ${agencyName(inc.agency)}` : ""}`);
    } catch (e) {
      buttons.forEach((b) => { b.disabled = false; });
      toast(`${id}: ${e.message}`, true);
      if (e.status === 409) {
        const fresh = await api("GET", `/api/v1/incidents/${id}`).catch(() => null);
        if (fresh) onIncident(fresh, false);
      }
    }
  }

  function flashRow(id) {
    const row = state.rows.get(id);
    if (!row) return;
    row.classList.remove("flash");
    void row.offsetWidth; // restart the animation
    row.classList.add("flash");
  }

  // ---- detail panel -----------------------------------------------------------------------------

  function select(id) {
    state.selected = id;
    for (const [rid, row] of state.rows) row.classList.toggle("selected", rid === id);
    const inc = state.incidents.get(id);
    if (inc && state.map) state.map.panTo([inc.location.lat, inc.location.lon]);
    showDetail(id);
  }

  async function showDetail(id) {
    let d;
    try {
      d = await api("GET", `/api/v1/incidents/${id}`);
    } catch (_) {
      return;
    }
    if (state.selected !== id) return;
    const box = $("detail");
    box.replaceChildren();
    const h = el("h3", null, `${d.id} · ${kindLabel(d.kind)} · ${stateLabel(d)}`);
    const where = el("p", null, `${d.location.address} · area ${d.location.area} · ` +
      `${d.location.lat.toFixed(6)}, ${d.location.lon.toFixed(6)}`);
    const first = el("p", "muted", `First press received ${fmtTime(d.created_at)}; ${d.press_count} press(es) ` +
      `from ${d.sources.join(", ")}`);
    box.append(h, where, first);
    box.append(el("h4", null, "History"));
    const hist = el("ol", "history");
    for (const e of d.history) {
      const li = el("li", `hist-${e.kind}`);
      li.append(el("span", "hist-time", fmtTime(e.at)), el("span", "hist-actor", e.actor));
      let what;
      if (e.kind === "note") what = `note: ${e.detail && e.detail.note}`;
      else if (e.kind === "escalation") what = `ESCALATED after ${e.detail ? e.detail.after_s : "?"} s unacknowledged`;
      else if (!e.from_state) what = "alarm received";
      else {
        what = `${e.from_state} → ${e.to_state}`;
        if (e.detail && e.detail.agency) what += ` (${agencyName(e.detail.agency)})`;
        if (e.detail && e.detail.note) what += `: ${e.detail.note}`;
      }
      li.append(el("span", "hist-what", what));
      hist.append(li);
    }
    box.append(hist);
    box.append(el("h4", null, "Presses"));
    const presses = el("ol", "presses-list");
    for (const ev of d.events) {
      presses.append(el("li", null, `${fmtTime(ev.received_at)} · ${ev.device_id} seq ${ev.seq}` +
        `${ev.test ? " (test)" : ""}`));
    }
    box.append(presses);
  }

  // ---- map --------------------------------------------------------------------------------------

  function initMap() {
    if (!window.L) {
      // Leaflet is served by the command center itself, so this only happens if the page is broken.
      $("map-note").hidden = false;
      $("map-note").textContent = "Map unavailable. The list is complete.";
      return;
    }
    const s = state.settings;
    const map = L.map("map", {zoomControl: true, attributionControl: true}).setView(s.map_center, s.map_zoom);
    const tiles = L.tileLayer(s.tile_url, {maxZoom: 19, attribution: s.tile_attribution});
    tiles.on("tileerror", () => {
      if (state.tilesFailed) return;
      state.tilesFailed = true;
      const note = $("map-note");
      note.hidden = false;
      note.textContent = "Map tiles unavailable (offline?). Alarm positions are still shown; the list is complete.";
    });
    tiles.on("tileload", () => {
      state.tilesFailed = false;
      $("map-note").hidden = true;
    });
    tiles.addTo(map);
    state.map = map;
  }

  function updateMarkers(open) {
    if (!state.map) return;
    const keep = new Set();
    for (const inc of open) {
      keep.add(inc.id);
      const color = STATE_COLORS[inc.state] || "#94a3b8";
      const escalated = inc.state === "new" && inc.escalated_at;
      let m = state.markers.get(inc.id);
      const style = {
        radius: inc.state === "new" ? 11 : 8,
        color: escalated ? "#fde047" : "#0f172a",
        weight: escalated ? 4 : 2,
        fillColor: color,
        fillOpacity: 0.95,
      };
      if (!m) {
        m = L.circleMarker([inc.location.lat, inc.location.lon], style);
        m.on("click", () => select(inc.id));
        m.addTo(state.map);
        state.markers.set(inc.id, m);
      } else {
        m.setLatLng([inc.location.lat, inc.location.lon]);
        m.setStyle(style);
      }
      // An element, not a string: Leaflet would put a string in as HTML.
      m.bindTooltip(el("span", null, `${inc.id} · ${kindLabel(inc.kind)} · ${inc.location.address}`));
    }
    for (const [id, m] of state.markers) {
      if (!keep.has(id)) { m.remove(); state.markers.delete(id); }
    }
  }

  function fitMap() {
    if (!state.map || !state.markers.size) return;
    const bounds = L.latLngBounds([...state.markers.values()].map((m) => m.getLatLng()));
    state.map.fitBounds(bounds.pad(0.3), {maxZoom: 15});
    state.fitted = true;
  }

  // ---- sound and attention ----------------------------------------------------------------------

  function ensureAudio() {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    if (!state.audio) state.audio = new Ctx();
    if (state.audio.state === "suspended") state.audio.resume().catch(() => {});
    updateSoundButton();
  }

  function beep(ctx, at, freq, dur, type = "square") {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = type;
    osc.frequency.setValueAtTime(freq, at);
    gain.gain.setValueAtTime(0.0001, at);
    gain.gain.exponentialRampToValueAtTime(0.25, at + 0.01);
    gain.gain.exponentialRampToValueAtTime(0.0001, at + dur);
    osc.connect(gain).connect(ctx.destination);
    osc.start(at);
    osc.stop(at + dur + 0.02);
  }

  function alarm(kind) {
    // Recorded whether or not a speaker is there, so that tests and the status line can see it.
    state.sounds += 1;
    document.body.dataset.lastSound = kind;
    document.body.dataset.soundCount = String(state.sounds);
    state.lastAlarmSound = Date.now();
    if (Date.now() < state.muteUntil) return;
    const ctx = state.audio;
    if (!ctx || ctx.state !== "running") { updateSoundButton(); return; }
    const t = ctx.currentTime + 0.02;
    if (kind === "escalation") {
      for (let i = 0; i < 4; i++) { // a two-tone siren: harder to ignore than the new-alarm beeps
        beep(ctx, t + i * 0.5, 988, 0.22, "sawtooth");
        beep(ctx, t + i * 0.5 + 0.25, 659, 0.22, "sawtooth");
      }
    } else {
      for (let i = 0; i < 3; i++) beep(ctx, t + i * 0.22, 880, 0.14);
    }
  }

  function updateSoundButton() {
    const b = $("sound");
    const left = state.muteUntil - Date.now();
    if (left > 0) {
      b.textContent = `Muted ${Math.ceil(left / 1000)} s`;
      b.className = "btn btn-small btn-muted";
    } else if (!state.audio || state.audio.state !== "running") {
      b.textContent = "Click to enable sound";
      b.className = "btn btn-small btn-warn";
    } else {
      b.textContent = "Sound: on";
      b.className = "btn btn-small";
    }
  }

  function onSoundButton() {
    ensureAudio();
    if (state.muteUntil > Date.now()) state.muteUntil = 0;
    else if (state.audio && state.audio.state === "running") state.muteUntil = Date.now() + MUTE_MS;
    updateSoundButton();
  }

  // ---- plumbing: gateways that stopped reporting ------------------------------------------------

  function clockTime(iso) {
    return new Date(iso).toLocaleTimeString(undefined, {hourCycle: "h23", hour: "2-digit", minute: "2-digit"});
  }

  async function loadPlumbing() {
    if (!state.me) return;
    let answer;
    try {
      answer = await api("GET", "/api/v1/gateways", undefined, {signInOn401: false});
    } catch (_) {
      return; // the banner stays as it was; the connection indicator tells of a lost server
    }
    const banner = $("plumbing-banner");
    banner.replaceChildren();
    const silent = answer.gateways.filter((g) => g.status === "silent");
    const unlinked = answer.gateways.filter((g) => g.status !== "silent" && !g.broker_connected);
    for (const g of silent) {
      const name = g.instance === g.gateway_id ? g.gateway_id : `${g.gateway_id} (${g.instance})`;
      const at = clockTime(g.last_report_at);
      const line = document.createElement("span");
      line.className = "plumbing-line";
      line.textContent = `Gateway ${name} tidak melapor sejak ${at} / Gateway ${name} silent since ${at}`;
      banner.append(line);
    }
    for (const g of unlinked) {
      const name = g.instance === g.gateway_id ? g.gateway_id : `${g.gateway_id} (${g.instance})`;
      const line = document.createElement("span");
      line.className = "plumbing-line plumbing-warn";
      line.textContent = `Gateway ${name} terputus dari broker MQTT / Gateway ${name} lost its MQTT broker`;
      banner.append(line);
    }
    banner.hidden = silent.length + unlinked.length === 0;
    document.body.dataset.gatewaysSilent = String(silent.length);
  }

  function tick() {
    $("clock").textContent = new Date(serverNow()).toLocaleTimeString(undefined, {hourCycle: "h23"});
    for (const [id, row] of state.rows) {
      const inc = state.incidents.get(id);
      if (inc) updateElapsed(row, inc);
    }
    const waiting = [...state.incidents.values()].filter((i) => i.state === "new");
    if (waiting.length && Date.now() - state.lastAlarmSound >= REMIND_EVERY_MS) {
      alarm(waiting.some((i) => i.escalated_at) ? "escalation" : "new-alarm");
    }
    document.title = waiting.length && Math.floor(Date.now() / 1000) % 2
      ? `(${waiting.length}) ALARM · Siaga` : "Siaga · Command Center";
    updateSoundButton();
  }

  // ---- devices ----------------------------------------------------------------------------------

  async function loadFaults() {
    const faults = await api("GET", "/api/v1/devices/faults");
    const body = $("faults-body");
    body.replaceChildren();
    const names = {offline: "Offline", low_battery: "Low battery", tamper: "Tamper", bad_message: "Bad message",
                   undelivered: "Alarm not delivered"};
    for (const f of faults) {
      const tr = el("tr", `fault-${f.fault}`);
      const loc = f.location ? `${f.location.address} (${f.location.area})` : "–";
      const detail = Object.entries(f.detail || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
      for (const text of [f.device_id, names[f.fault] || f.fault, `${fmtTime(f.since)} (${fmtElapsed(serverNow() - Date.parse(f.since))})`, loc, detail]) {
        tr.append(el("td", null, text));
      }
      body.append(tr);
    }
    $("faults-empty").hidden = faults.length > 0;
  }

  // ---- supervisor -------------------------------------------------------------------------------

  function isoDay(d) {
    return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
  }

  function table(id, headers, rows, empty = "none in this period") {
    const t = $(id);
    t.replaceChildren();
    const head = el("tr");
    for (const h of headers) head.append(el("th", null, h));
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "muted", empty);
      td.colSpan = headers.length;
      tr.append(td);
      tbody.append(tr);
    }
    for (const r of rows) {
      const tr = el("tr");
      for (const c of r) tr.append(el("td", null, String(c)));
      tbody.append(tr);
    }
    t.append(thead, tbody);
  }

  const FIGURE_HEADERS = ["", "Incidents", "→ Acknowledge (median · p90)", "→ Dispatch (median · p90)",
    "→ Resolve (median · p90)", "False alarms", "Bukan darurat / Not an emergency"];

  function pair(f) {
    return f.count ? `${fmtSeconds(f.median_s)} · ${fmtSeconds(f.p90_s)}` : "–";
  }

  function figureRow(label, g) {
    return [label, g.incidents, pair(g.acknowledge), pair(g.dispatch), pair(g.resolve), g.false_alarms, g.referrals];
  }

  async function loadSupervisor() {
    const from = $("stats-from").value;
    const to = $("stats-to").value;
    const q = `from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`;
    $("export").href = `/api/v1/export/incidents.csv?${q}`;
    const [s, settings, audit] = await Promise.all([
      api("GET", `/api/v1/stats?${q}`),
      api("GET", "/api/v1/settings"),
      api("GET", "/api/v1/audit?limit=50"),
    ]);
    $("stats-zone").textContent = `days in ${s.timezone}; test presses left out (${s.test_incidents_excluded})`;
    const o = s.overall;
    const kpis = $("kpis");
    kpis.replaceChildren();
    const cards = [
      ["Incidents", String(o.incidents)],
      ["Press → acknowledge", `${fmtSeconds(o.acknowledge.median_s)} median`, `p90 ${fmtSeconds(o.acknowledge.p90_s)}`],
      ["Press → dispatch", `${fmtSeconds(o.dispatch.median_s)} median`, `p90 ${fmtSeconds(o.dispatch.p90_s)}`],
      ["Press → resolve", `${fmtSeconds(o.resolve.median_s)} median`, `p90 ${fmtSeconds(o.resolve.p90_s)}`],
      ["False alarms", String(o.false_alarms), o.incidents ? `${Math.round(100 * o.false_alarms / o.incidents)} %` : ""],
      ["Bukan darurat / Not an emergency", String(o.referrals), o.incidents ? `${Math.round(100 * o.referrals / o.incidents)} %` : ""],
      ["Unacknowledged now", String(o.unacknowledged)],
    ];
    for (const [label, value, sub] of cards) {
      const c = el("div", "kpi");
      c.append(el("div", "kpi-label", label), el("div", "kpi-value", value));
      if (sub) c.append(el("div", "kpi-sub", sub));
      kpis.append(c);
    }
    table("by-day", FIGURE_HEADERS, s.by_day.map((g) => figureRow(g.key, g)));
    table("by-agency", FIGURE_HEADERS, s.by_agency.map((g) => figureRow(agencyName(g.key), g)));
    table("by-area", FIGURE_HEADERS, s.by_area.map((g) => figureRow(g.key, g)));
    table("false-alarms", ["Device", "Location", "Incidents", "False alarms", "Rate", "Bukan darurat / Not an emergency"],
      s.false_alarms_by_device.map((d) => [d.device_id, `${d.address} (${d.area})`, d.incidents, d.false_alarms,
        `${Math.round(d.rate * 100)} %`, d.referrals]));
    table("offline", ["Device", "Offline since", "Location"], s.devices_offline.map((f) => [
      f.device_id, `${fmtTime(f.since)} (${fmtElapsed(serverNow() - Date.parse(f.since))})`,
      f.location ? `${f.location.address} (${f.location.area})` : "–"]), "none: every button is reporting");
    const dl = $("settings");
    dl.replaceChildren();
    for (const [k, v] of [
      ["Escalate unacknowledged alarms after", `${settings.escalation_after_s} s`],
      ["Escalation webhook", settings.escalation_webhook_url || "not configured"],
      ["Webhook events waiting", String(settings.escalation_webhook_pending)],
      ["State reports to the gateway waiting", String(settings.state_reports_pending)],
    ]) {
      dl.append(el("dt", null, k), el("dd", null, v));
    }
    table("audit", ["When", "Who", "What", "Incident / target", "Detail"], audit.map((a) => [
      fmtTime(a.at), a.actor, a.action, a.target || "",
      a.detail ? Object.entries(a.detail).map(([k, v]) => `${k}: ${v}`).join(", ") : ""]));
  }

  // ---- tabs and wiring --------------------------------------------------------------------------

  function showView(name) {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.view === name);
    for (const v of ["incidents", "devices", "supervisor"]) $(`view-${v}`).hidden = v !== name;
    if (name === "devices") loadFaults().catch((e) => toast(e.message, true));
    if (name === "supervisor") loadSupervisor().catch((e) => toast(e.message, true));
    if (name === "incidents" && state.map) setTimeout(() => state.map.invalidateSize(), 0);
  }

  function wire() {
    $("login-form").addEventListener("submit", onLogin);
    $("logout").addEventListener("click", onLogout);
    $("sound").addEventListener("click", onSoundButton);
    document.addEventListener("click", ensureAudio);
    for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => showView(t.dataset.view));
    const today = new Date();
    $("stats-to").value = isoDay(today);
    $("stats-from").value = isoDay(new Date(today.getTime() - 6 * 86400000));
    $("stats-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      loadSupervisor().catch((e) => toast(e.message, true));
    });
  }

  async function boot() {
    wire();
    try {
      state.me = await api("GET", "/api/v1/session", undefined, {signInOn401: false});
    } catch (e) {
      showLogin(e.status === 401 ? "" : `The command center did not answer: ${e.message}`);
      return;
    }
    await start();
  }

  window.siagaConsole = state; // for diagnosis from the browser's developer tools
  boot();
})();
