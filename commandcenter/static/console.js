// Siaga operator console: plain JavaScript, no build step. Everything shown comes from the command
// center's HTTP API (docs/commandcenter.md); live changes arrive as server-sent events. Data from the
// API is only ever put into the page as text (textContent), never as HTML.
//
// Every word the console shows comes from the message catalog (siaga/locale/console.json, served as
// /console/i18n.json), in the language the person chose: `t(key, params)` here, `data-i18n` and
// `data-i18n-attr` in index.html. What is data (ids, names, addresses, numbers, times) is marked
// with `data-value`, so that a test can tell the two apart and find any word left untranslated.
"use strict";

(() => {
  const KIND_KEYS = {
    general: "kind.general", medical: "kind.medical", fire: "kind.fire", crime: "kind.crime",
    disaster: "kind.disaster",
  };
  const STATE_KEYS = {
    new: "state.new", acknowledged: "state.acknowledged", dispatched: "state.dispatched",
    resolved: "state.resolved", false_alarm: "state.false_alarm",
  };
  // The short names, where a state is one word of a sentence (the history: "Baru → Diterima").
  const STATE_SHORT_KEYS = {
    new: "state.short.new", acknowledged: "state.short.acknowledged", dispatched: "state.short.dispatched",
    resolved: "state.short.resolved", false_alarm: "state.short.false_alarm",
  };
  const ROLE_KEYS = {operator: "role.operator", supervisor: "role.supervisor", agency: "role.agency"};
  const FAULT_KEYS = {
    offline: "fault.offline", low_battery: "fault.low_battery", tamper: "fault.tamper",
    bad_message: "fault.bad_message", undelivered: "fault.undelivered",
    on_backup_path: "fault.on_backup_path", backup_path_down: "fault.backup_path_down",
  };
  // Keys of a fault's detail that are each path's last success (gateway/supervision.py): shown as
  // one translated line, not as raw keys.
  const PATH_TIMES = ["last_mqtt_at", "last_sms_at"];
  // A dispatch moves forward only, in this order (the API refuses anything else); `declined` is
  // possible from requested or accepted, with a reason.
  const DISPATCH_STEPS = ["requested", "accepted", "en_route", "on_scene", "done"];
  const DISPATCH_KEYS = {
    requested: "dispatch.status.requested", accepted: "dispatch.status.accepted",
    en_route: "dispatch.status.en_route", on_scene: "dispatch.status.on_scene", done: "dispatch.status.done",
    declined: "dispatch.status.declined",
  };
  // The agency's buttons, in the order the work goes: the words an agency officer says.
  const DISPATCH_BUTTON_KEYS = {
    accepted: "dispatch.do.accepted", en_route: "dispatch.do.en_route", on_scene: "dispatch.do.on_scene",
    done: "dispatch.do.done", declined: "dispatch.do.declined",
  };
  const DISPATCH_TIME_KEYS = {
    requested_at: "dispatch.time.requested", accepted_at: "dispatch.time.accepted",
    en_route_at: "dispatch.time.en_route", on_scene_at: "dispatch.time.on_scene", done_at: "dispatch.time.done",
    declined_at: "dispatch.time.declined",
  };
  // A rollout's state, and its buttons' states, as the gateway reports them (docs/protocol.md §11).
  const ROLLOUT_STATE_KEYS = {
    active: "firmware.state.active", halted: "firmware.state.halted", done: "firmware.state.done",
    cancelled: "firmware.state.cancelled",
  };
  const DEVICE_STATE_KEYS = {
    offered: "firmware.device.offered", downloading: "firmware.device.downloading",
    installed: "firmware.device.installed", updated: "firmware.device.updated", failed: "firmware.device.failed",
    withdrawn: "firmware.device.withdrawn",
  };
  // Why a button's update failed: the word it reported (docs/ota.md, docs/protocol.md §11).
  const UPDATE_REASON_KEYS = {
    malformed: "firmware.reason.malformed", too_large: "firmware.reason.too_large",
    unknown_key: "firmware.reason.unknown_key", bad_signature: "firmware.reason.bad_signature",
    wrong_board: "firmware.reason.wrong_board", boot_too_old: "firmware.reason.boot_too_old",
    wrong_hash: "firmware.reason.wrong_hash", wrong_sha256: "firmware.reason.wrong_sha256",
    no_space: "firmware.reason.no_space", wrong_mpy: "firmware.reason.wrong_mpy", stalled: "firmware.reason.stalled",
    selftest: "firmware.reason.selftest", crashes: "firmware.reason.crashes",
  };
  const BUTTON_COLUMNS = ["col.device", "col.state", "col.firmware", "col.reason", "col.changed"];
  const LOCALES = {id: "id-ID", en: "en-GB"};
  const REFERRAL_CHANNEL = "LAPOR!"; // the city's complaint channel: a name, the same in both languages
  const STATE_COLORS = {new: "#ef4444", acknowledged: "#f59e0b", dispatched: "#3b82f6"};
  const OPEN = new Set(["new", "acknowledged", "dispatched"]);
  const CLOSED_SHOWN = 30;
  const REMIND_EVERY_MS = 10000; // repeat the alarm sound while anything is unacknowledged
  const MUTE_MS = 120000; // muting is always temporary
  const LOW_BATTERY_MV = 3400;
  const PLUMBING_EVERY_MS = 5000; // how often the gateways' state is asked for (the silence banner)
  const SHIFTS_EVERY_MS = 30000; // who is on duty: changes rarely, and a hand-over reloads it at once

  const state = {
    me: null,
    settings: null,
    lang: "id",
    catalog: {},
    incidents: new Map(), // id -> incident as the API returns it
    rows: new Map(), // id -> <li>
    seenSinceHello: new Set(),
    selected: null,
    offsetMs: 0, // server clock - browser clock
    es: null,
    map: null,
    zoom: null,
    markers: new Map(),
    tilesFailed: false,
    fitted: false,
    audio: null,
    muteUntil: 0,
    lastAlarmSound: 0,
    sounds: 0,
    started: false,
    ticker: null,
    shift: undefined, // the person's open shift; null: none; undefined: not known (or no shifts here)
    onDuty: [],
    faultsShown: false,
    gateways: [], // the gateways' latest reports (GET /api/v1/gateways): the banner and the firmware panel
  };

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // ---- language ---------------------------------------------------------------------------------

  /** The text of `key` in the person's language, `{name}` placeholders filled from `params`. */
  function t(key, params) {
    const entry = state.catalog[key];
    let text = entry ? (entry[state.lang] || entry.en) : undefined;
    if (text === undefined) {
      if (Object.keys(state.catalog).length) console.warn("no catalog text for", key);
      text = key;
    }
    if (!params) return text;
    return text.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
  }

  /** Puts the catalog's texts into the page's static elements: `data-i18n="key"` for the text,
   *  `data-i18n-attr="title:key,aria-label:key"` for attributes. */
  function applyI18n(root = document) {
    for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    for (const node of root.querySelectorAll("[data-i18n-attr]")) {
      for (const pair of node.dataset.i18nAttr.split(",")) {
        const [attr, key] = pair.split(":").map((s) => s.trim());
        node.setAttribute(attr, t(key));
      }
    }
    document.documentElement.lang = state.lang;
    for (const b of document.querySelectorAll("[data-lang]")) {
      b.classList.toggle("active", b.dataset.lang === state.lang);
      b.setAttribute("aria-pressed", String(b.dataset.lang === state.lang));
    }
  }

  async function loadCatalog() {
    const resp = await fetch("/console/i18n.json", {credentials: "same-origin"});
    state.catalog = await resp.json();
  }

  /** Switches the page to `lang` at once, without a reload; remembered for the person when signed in
   *  (and in this browser for the sign-in page). */
  async function setLanguage(lang) {
    if (!LOCALES[lang]) return;
    state.lang = lang;
    try { localStorage.setItem("siaga.lang", lang); } catch (_) { /* private mode: fine */ }
    redraw();
    if (state.me) {
      try {
        state.me = await api("PUT", "/api/v1/session/language", {language: lang});
      } catch (e) {
        toast(t("toast.language_not_saved", {message: e.message}), true);
      }
    }
  }

  /** Everything drawn from data again, in the current language. */
  function redraw() {
    applyI18n();
    if (!state.me || !state.settings) return;
    drawWho();
    setConnected(document.body.dataset.live === "1");
    for (const row of state.rows.values()) row.remove();
    state.rows.clear();
    render();
    if (state.map) drawMapControls();
    releaseDetail();
    if (state.selected) showDetail(state.selected);
    updateSoundButton();
    tick();
    loadPlumbing();
    drawShift();
    if (!$("view-devices").hidden) {
      loadFaults().catch((e) => toast(e.message, true));
      drawFirmware();
    }
    if (!$("view-supervisor").hidden) loadSupervisor().catch((e) => toast(e.message, true));
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
        // `message` is the same error in the person's language, where the API has it.
        const said = j.message || j.detail;
        detail = typeof said === "string" ? said : JSON.stringify(said);
      } catch (_) { /* not JSON */ }
      if (resp.status === 401 && signInOn401) showLogin(t("login.session_ended"));
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

  /** An element holding data (an id, a name, an address, a number, a time): never translated. */
  function val(tag, cls, value) {
    const e = el(tag, cls, value === null || value === undefined ? "–" : String(value));
    e.dataset.value = "";
    return e;
  }

  function setVal(node, value) {
    node.textContent = value;
    node.dataset.value = "";
  }

  function setText(node, text) {
    node.textContent = text;
    delete node.dataset.value;
  }

  function serverNow() {
    return Date.now() + state.offsetMs;
  }

  function fmtElapsed(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return t("time.s", {s});
    if (s < 3600) return t("time.min_s", {m: Math.floor(s / 60), s: String(s % 60).padStart(2, "0")});
    const m = Math.floor(s / 60);
    if (m < 48 * 60) return t("time.h_min", {h: Math.floor(m / 60), m: String(m % 60).padStart(2, "0")});
    return t("time.days", {d: Math.floor(m / 1440)});
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    const locale = LOCALES[state.lang];
    if (s < 60) return t("time.s", {s: s.toLocaleString(locale, {minimumFractionDigits: 1, maximumFractionDigits: 1})});
    if (s < 3600) return t("time.min_s", {m: Math.floor(s / 60), s: String(Math.round(s % 60)).padStart(2, "0")});
    return t("time.h_min", {h: Math.floor(s / 3600), m: String(Math.floor((s % 3600) / 60)).padStart(2, "0")});
  }

  /** Times in the room's time zone when the command center names one, else the browser's. */
  function zoneOptions() {
    const zone = state.settings && state.settings.timezone;
    return zone ? {timeZone: zone} : {};
  }

  // Made once per language, zone and shape: the clock and every row's times use them each second.
  const formatters = new Map();

  function formatter(shape) {
    const options = {...shape, hourCycle: "h23", ...zoneOptions()};
    const key = `${state.lang} ${JSON.stringify(options)}`;
    if (!formatters.has(key)) formatters.set(key, new Intl.DateTimeFormat(LOCALES[state.lang], options));
    return formatters.get(key);
  }

  function fmtTime(iso) {
    if (!iso) return "–";
    return formatter({year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit",
      second: "2-digit"}).format(new Date(iso));
  }

  function clockTime(iso, seconds = false) {
    const shape = seconds ? {hour: "2-digit", minute: "2-digit", second: "2-digit"} : {hour: "2-digit", minute: "2-digit"};
    return formatter(shape).format(iso ? new Date(iso) : new Date(serverNow()));
  }

  function kindNode(kind, cls = "kind") {
    return KIND_KEYS[kind] ? el("span", cls, t(KIND_KEYS[kind])) : val("span", cls, kind.toUpperCase());
  }

  function stateText(inc) {
    if (inc.referred_to) {
      return inc.referral_ref
        ? t("state.referred_ref", {channel: inc.referred_to, ref: inc.referral_ref})
        : t("state.referred", {channel: inc.referred_to});
    }
    return STATE_KEYS[inc.state] ? t(STATE_KEYS[inc.state]) : inc.state;
  }

  function agencyName(id) {
    const a = (state.settings && state.settings.agencies || []).find((x) => x.id === id);
    if (!a) return id;
    return state.lang === "en" && a.name_en ? a.name_en : a.name;
  }

  function numberOf(id) {
    return parseInt(id.slice(4), 10);
  }

  function dispatchesOf(inc) {
    return Array.isArray(inc.dispatches) ? inc.dispatches : [];
  }

  function toast(message, bad = false) {
    const box = $("toast");
    box.textContent = message;
    box.className = bad ? "toast toast-bad" : "toast";
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 5000);
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
      err.textContent = e.status === 401 ? t("login.wrong") : t("login.failed", {message: e.message});
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

  function drawWho() {
    const me = state.me;
    const who = $("who");
    who.replaceChildren(val("span", "who-name", me.name), document.createTextNode(" · "),
      el("span", "who-role", t(ROLE_KEYS[me.role] || me.role)));
    if (me.agency) who.append(document.createTextNode(" · "), val("span", "who-agency", agencyName(me.agency)));
    if (me.role === "agency") {
      const note = $("agency-note");
      note.hidden = false;
      note.textContent = t("agency.note", {agency: agencyName(me.agency)});
    }
  }

  async function start() {
    state.settings = await api("GET", "/api/v1/console/settings");
    state.offsetMs = Date.parse(state.settings.server_time) - Date.now();
    if (state.me.language && state.me.language !== state.lang) {
      state.lang = state.me.language;
      try { localStorage.setItem("siaga.lang", state.lang); } catch (_) { /* fine */ }
    }
    applyI18n();
    $("login").hidden = true;
    $("app").hidden = false;
    const me = state.me;
    drawWho();
    document.body.dataset.role = me.role;
    document.querySelector('[data-view="devices"]').hidden = me.role === "agency";
    document.querySelector('[data-view="supervisor"]').hidden = me.role !== "supervisor";
    if (!state.started) {
      state.started = true;
      initMap();
      state.ticker = setInterval(tick, 1000);
      tick();
      setInterval(loadPlumbing, PLUMBING_EVERY_MS);
      setInterval(loadShifts, SHIFTS_EVERY_MS);
    }
    loadPlumbing();
    loadShifts();
    connect();
  }

  // ---- live updates -----------------------------------------------------------------------------

  function setConnected(ok) {
    const c = $("conn");
    c.textContent = ok ? t("conn.live") : t("conn.reconnecting");
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
      resync().catch((e) => toast(t("toast.load_failed", {message: e.message}), true));
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
      const unanswered = dispatchesOf(inc).filter((d) => d.escalated_at && d.status === "requested");
      toast(unanswered.length && inc.state !== "new"
        ? t("toast.dispatch_unanswered", {id: inc.id, agency: agencyName(unanswered[0].agency)})
        : t("toast.escalated", {id: inc.id}), true);
    } else if (!known && inc.state === "new") {
      alarm("new-alarm");
      flashRow(inc.id);
    } else if (known && inc.state === "new" && inc.press_count > known.press_count) {
      alarm("new-alarm");
      flashRow(inc.id);
    } else if (known && inc.needs_dispatch && !known.needs_dispatch) {
      alarm("escalation"); // every agency declined: the incident is back with the room
      flashRow(inc.id);
    }
    if (state.selected === inc.id) showDetail(inc.id);
  }

  // Fault reports can come by the thousand (a power cut: every button's last will). They are
  // gathered for a moment: a few are toasted one by one, a wave as one line, and the fault list is
  // fetched once per wave.
  let faultWave = [];
  let faultTimer = null;

  function onFault(f) {
    if (state.me.role === "agency") return;
    faultWave.push(f);
    if (f.fault === "undelivered" && f.active) alarm("new-alarm");  // an alarm that missed the list
    if (faultTimer === null) faultTimer = setTimeout(showFaultWave, 300);
  }

  function faultName(fault) {
    return FAULT_KEYS[fault] ? t(FAULT_KEYS[fault]) : fault;
  }

  function showFaultWave() {
    const wave = faultWave;
    faultWave = [];
    faultTimer = null;
    if (wave.length <= 3) {
      for (const f of wave) {
        const params = {device: f.device_id, fault: faultName(f.fault)};
        toast(f.active ? t("toast.fault", params) : t("toast.fault_cleared", params), f.active);
      }
    } else {
      const active = wave.filter((f) => f.active).length;
      toast(t("toast.fault_wave", {active, cleared: wave.length - active}), active > 0);
    }
    if (!$("view-devices").hidden) loadFaults();
  }

  // ---- the incident list ------------------------------------------------------------------------

  function openOrder(a, b) {
    // Back with the room (every agency declined) first, then unacknowledged, then the rest; newest first.
    const rank = (i) => (i.needs_dispatch ? 0 : i.state === "new" ? 1 : 2);
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
    setVal($("count-new"), fresh.length);
    setVal($("count-escalated"), escalated.length);
    setVal($("count-open"), open.length - fresh.length);
    const banner = $("alert-banner");
    banner.hidden = fresh.length === 0;
    banner.className = escalated.length ? "alert-banner alert-escalated" : "alert-banner";
    banner.textContent = escalated.length
      ? t("banner.escalated", {escalated: escalated.length, count: fresh.length})
      : t(fresh.length > 1 ? "banner.new_many" : "banner.new_one", {count: fresh.length});
    document.body.dataset.unacknowledged = String(fresh.length);
    drawSecondEscalation(fresh);
    updateMarkers(open);
  }

  /** Supervisors: alarms that escalated a second time (nobody answered after the first) are theirs. */
  function drawSecondEscalation(fresh) {
    const banner = $("escalation2-banner");
    const second = state.me && state.me.role === "supervisor" ? fresh.filter((i) => i.escalated2_at) : [];
    banner.hidden = second.length === 0;
    if (second.length) {
      banner.textContent = t("banner.escalated2", {ids: second.map((i) => i.id).join(", ")});
    }
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
    head.querySelector(".escalated-badge").textContent = t("row.escalated");
    head.querySelector(".test-badge").textContent = t("row.test");
    head.querySelector(".elapsed").setAttribute("data-testid", "elapsed");
    const where = el("div", "row-where");
    for (const cls of ["address", "area", "coords"]) where.append(el("span", cls));
    const facts = el("div", "row-facts");
    for (const cls of ["presses", "battery", "device", "agency-line", "by-line"]) facts.append(el("span", cls));
    const chips = el("div", "row-dispatches");
    chips.setAttribute("data-testid", "row-dispatches");
    const needs = el("div", "needs-line");
    needs.setAttribute("data-testid", "needs-dispatch");
    main.append(head, where, facts, chips, needs);
    const actions = el("div", "row-actions");
    li.append(main, actions);
    li.addEventListener("click", (ev) => {
      if (ev.target.closest("button, select, textarea, input, form, label")) return;
      select(id);
    });
    return li;
  }

  function updateRow(li, inc) {
    const mine = myDispatch(inc);
    // The buttons depend on these; anything else changes in place (and the buttons of an action that
    // just went through are drawn anew, so they are not left disabled).
    const shape = [inc.state, Boolean(inc.escalated_at), Boolean(inc.needs_dispatch), mine ? mine.status : "",
      dispatchesOf(inc).map((d) => `${d.agency}:${d.status}`).join(",")].join("|");
    const changed = li.dataset.shape !== shape;
    li.dataset.shape = shape;
    li.dataset.state = inc.state;
    li.dataset.escalated = String(Boolean(inc.escalated_at));
    li.dataset.created = inc.created_at;
    li.className = `incident state-${inc.state}${inc.escalated_at && inc.state === "new" ? " escalated" : ""}` +
      `${inc.needs_dispatch && OPEN.has(inc.state) ? " needs-dispatch" : ""}` +
      `${state.selected === inc.id ? " selected" : ""}${inc.test ? " test" : ""}`;
    const q = (cls) => li.querySelector(`.${cls}`);
    q("kind").replaceWith(kindNode(inc.kind, `kind kind-${KIND_KEYS[inc.kind] ? inc.kind : "other"}`));
    setVal(q("inc-id"), inc.id);
    q("state-badge").textContent = stateText(inc);
    q("escalated-badge").hidden = !(inc.escalated_at && inc.state === "new");
    q("test-badge").hidden = !inc.test;
    if (inc.location.address) setVal(q("address"), inc.location.address);
    else setText(q("address"), t("row.no_address"));
    q("area").textContent = inc.location.area ? t("row.area", {area: inc.location.area}) : "";
    setVal(q("coords"), `${inc.location.lat.toFixed(5)}, ${inc.location.lon.toFixed(5)}`);
    q("presses").textContent = inc.press_count > 1 ? t("row.pressed_many", {count: inc.press_count})
      : t("row.pressed_once");
    q("presses").classList.toggle("many", inc.press_count > 1);
    const bat = q("battery");
    bat.textContent = inc.battery_mv === null || inc.battery_mv === undefined
      ? t("row.battery_unknown")
      : t("row.battery", {volts: (inc.battery_mv / 1000).toLocaleString(LOCALES[state.lang],
        {minimumFractionDigits: 2, maximumFractionDigits: 2})});
    bat.classList.toggle("low", inc.battery_mv !== null && inc.battery_mv < LOW_BATTERY_MV);
    setVal(q("device"), inc.sources.length > 1 ? `${inc.device_id} +${inc.sources.length - 1}` : inc.device_id);
    const many = dispatchesOf(inc).length > 0;
    q("agency-line").textContent = inc.agency && !many ? t("row.agency", {agency: agencyName(inc.agency)}) : "";
    q("by-line").textContent = byLine(inc);
    drawChips(q("row-dispatches"), inc);
    const needs = q("needs-line");
    const declined = dispatchesOf(inc).filter((d) => d.status === "declined");
    needs.hidden = !(inc.needs_dispatch && OPEN.has(inc.state));
    needs.textContent = needs.hidden ? "" : t("row.needs_dispatch", {
      reason: declined.length ? declined[declined.length - 1].reason || "–" : "–"});
    updateElapsed(li, inc);
    if (changed || !li.querySelector(".row-actions").dataset.built) buildActions(li, inc);
  }

  function drawChips(box, inc) {
    box.replaceChildren();
    for (const d of dispatchesOf(inc)) box.append(chip(d, `chip-${d.agency}`));
  }

  /** A dispatch's agency and status, coloured by status. */
  function chip(d, testid) {
    const c = el("span", `chip chip-${d.status}${d.escalated_at && d.status === "requested" ? " chip-escalated" : ""}`);
    c.setAttribute("data-testid", testid);
    c.dataset.status = d.status;
    c.append(val("span", "chip-agency", agencyName(d.agency)), document.createTextNode(" · "),
      el("span", "chip-status", t(DISPATCH_KEYS[d.status] || d.status)));
    return c;
  }

  function byLine(inc) {
    if (inc.closed_by) return t("row.closed_by", {name: inc.closed_by});
    if (inc.dispatched_by) return t("row.dispatched_by", {name: inc.dispatched_by});
    if (inc.acknowledged_by) return t("row.acknowledged_by", {name: inc.acknowledged_by});
    return "";
  }

  function updateElapsed(li, inc) {
    const e = li.querySelector(".elapsed");
    const end = OPEN.has(inc.state) ? serverNow() : Date.parse(inc.closed_at);
    const ms = end - Date.parse(inc.created_at);
    e.textContent = OPEN.has(inc.state) ? t("row.ago", {elapsed: fmtElapsed(ms)})
      : t("row.took", {elapsed: fmtElapsed(ms)});
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
    if (state.me.role === "agency") {
      const mine = myDispatch(inc);
      if (mine) box.append(dispatchButtons(inc, mine, "agency-"));
      return;
    }
    const id = inc.id;
    if (inc.state === "new") {
      const ack = button(t("action.acknowledge"), "btn-ack", "acknowledge");
      ack.addEventListener("click", () => act(id, "acknowledge"));
      box.append(ack);
    }
    if ((inc.state === "acknowledged" || inc.needs_dispatch) && dispatchesOf(inc).every((d) => d.status === "declined")) {
      // The quick way: one agency from the row. Several, or by phone: the incident's panel.
      const sel = el("select", "agency-select");
      sel.setAttribute("data-testid", "agency-select");
      sel.setAttribute("aria-label", t("action.agency"));
      for (const a of state.settings.agencies) {
        const o = val("option", null, agencyName(a.id));
        o.value = a.id;
        sel.append(o);
      }
      sel.value = suggestedAgency(inc.kind);
      const go = button(t("action.dispatch"), "btn-dispatch", "dispatch");
      go.addEventListener("click", () => act(id, "dispatch", {agency: sel.value}));
      box.append(sel, go);
    }
    if (inc.state === "acknowledged" || inc.state === "dispatched") {
      const res = button(t("action.resolve"), "btn-resolve", "resolve");
      res.addEventListener("click", () => act(id, "resolve"));
      box.append(res);
    }
    if (OPEN.has(inc.state)) {
      const fa = button(t("action.false_alarm"), "btn-false", "false-alarm");
      fa.addEventListener("click", () => {
        // Two steps: closing an alarm as false must never be a slip of the mouse.
        if (fa.dataset.armed) { act(id, "false-alarm"); return; }
        fa.dataset.armed = "1";
        fa.textContent = t("action.false_alarm_confirm");
        fa.classList.add("armed");
        setTimeout(() => {
          delete fa.dataset.armed;
          fa.textContent = t("action.false_alarm");
          fa.classList.remove("armed");
        }, 5000);
      });
      box.append(fa);
      const refer = button(t("action.refer", {channel: REFERRAL_CHANNEL}), "btn-refer", "refer");
      refer.addEventListener("click", () => toggleReferForm(li, id));
      box.append(refer);
    }
    const note = button(t("action.note"), "btn-note", "note");
    note.addEventListener("click", () => toggleNoteForm(li, id));
    box.append(note);
  }

  function suggestedAgency(kind) {
    const ids = state.settings.agencies.map((a) => a.id);
    const guess = {fire: "fire", medical: "ambulance", crime: "police", disaster: "disaster"}[kind];
    return ids.includes(guess) ? guess : ids[0];
  }

  /** A small form inside `box`, opened by one click and closed by the next (null then). `fields`:
   *  {tag ("input" or "textarea"), max, rows, required, placeholder, testid}; `button`: {cls, text,
   *  testid}. On submit, `onSubmit` gets the trimmed values, the button and the form. */
  function toggleInlineForm(box, cls, fields, button, onSubmit) {
    let form = box.querySelector(`form.${cls}`);
    if (form) { form.remove(); return null; }
    form = el("form", cls);
    const inputs = fields.map((f) => {
      const input = el(f.tag || "input");
      input.maxLength = f.max;
      if (f.rows) input.rows = f.rows;
      if (f.required) input.required = true;
      input.placeholder = f.placeholder;
      input.setAttribute("data-testid", f.testid);
      return input;
    });
    const send = el("button", button.cls, button.text);
    send.type = "submit";
    send.setAttribute("data-testid", button.testid);
    form.append(...inputs, send);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      onSubmit(inputs.map((i) => i.value.trim()), send, form);
    });
    box.append(form);
    inputs[0].focus();
    return form;
  }

  // Not an emergency: the caller is referred to LAPOR! (the city's complaint channel). A small form
  // with the optional ticket number and note, so that it too takes a second, deliberate click.
  function toggleReferForm(li, id) {
    toggleInlineForm(li, "refer-form", [
      {max: 100, placeholder: t("refer.reference", {channel: REFERRAL_CHANNEL}), testid: "refer-reference"},
      {tag: "textarea", max: 2000, rows: 2, placeholder: t("refer.note"), testid: "refer-note"},
    ], {cls: "btn btn-small", text: t("refer.save"), testid: "refer-save"}, async ([reference, note], save, form) => {
      const body = {channel: REFERRAL_CHANNEL};
      if (reference) body.reference = reference;
      if (note) body.note = note;
      save.disabled = true;
      form.remove();
      await act(id, "refer", body);
    });
  }

  function toggleNoteForm(li, id) {
    toggleInlineForm(li, "note-form", [
      {tag: "textarea", max: 2000, rows: 2, placeholder: t("note.placeholder"), testid: "note-text"},
    ], {cls: "btn btn-small", text: t("note.save"), testid: "note-save"}, async ([note], save, form) => {
      if (!note) return;
      save.disabled = true;
      try {
        const inc = await api("POST", `/api/v1/incidents/${id}/notes`, {note});
        form.remove();
        onIncident(inc, false);
        toast(t("toast.note_added", {id}));
        if (state.selected === id) showDetail(id);
      } catch (e) {
        save.disabled = false;
        toast(t("toast.note_failed", {message: e.message}), true);
      }
    });
  }

  async function act(id, action, body) {
    const row = state.rows.get(id);
    const buttons = row ? row.querySelectorAll(".row-actions button") : [];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const inc = await api("POST", `/api/v1/incidents/${id}/${action}`, body);
      onIncident(inc, false);
      toast(inc.agency && action === "dispatch"
        ? t("toast.dispatched", {id, agency: agencyName(inc.agency)})
        : t("toast.done", {id, state: stateText(inc)}));
    } catch (e) {
      buttons.forEach((b) => { b.disabled = false; });
      toast(t("toast.failed", {id, message: e.message}), true);
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

  // ---- dispatches: several agencies per incident ------------------------------------------------

  function myDispatch(inc) {
    if (!state.me || state.me.role !== "agency") return null;
    return dispatchesOf(inc).find((d) => d.agency === state.me.agency) || null;
  }

  /** What a dispatch may become next: forward along the steps; declined only before setting out. */
  function nextSteps(status) {
    const at = DISPATCH_STEPS.indexOf(status);
    const steps = at < 0 ? [] : DISPATCH_STEPS.slice(at + 1);
    if (status === "requested" || status === "accepted") steps.push("declined");
    return steps;
  }

  /** The big buttons of an agency's screen (Terima, Berangkat, Tiba di lokasi, Selesai, Tolak), also
   *  shown to operators in the incident panel to set a dispatch on the agency's behalf. */
  function dispatchButtons(inc, d, prefix) {
    const box = el("div", "dispatch-buttons");
    const allowed = new Set(nextSteps(d.status));
    for (const status of ["accepted", "en_route", "on_scene", "done", "declined"]) {
      const b = button(t(DISPATCH_BUTTON_KEYS[status]), `btn-step btn-step-${status}`, `dispatch-${status}`,
        `${prefix}${status}`);
      b.disabled = !allowed.has(status);
      if (status === "declined") b.addEventListener("click", () => toggleDeclineForm(box, inc, d, prefix));
      else b.addEventListener("click", () => setDispatch(inc.id, d.agency, {status}, box));
      box.append(b);
    }
    return box;
  }

  function toggleDeclineForm(box, inc, d, prefix) {
    const form = toggleInlineForm(box, "decline-form", [
      {max: 500, required: true, placeholder: t("dispatch.decline_reason"), testid: `${prefix}decline-reason`},
    ], {cls: "btn btn-small btn-step-declined", text: t("dispatch.decline_send"), testid: `${prefix}decline-send`},
    ([reason]) => {
      if (!reason) return;
      setDispatch(inc.id, d.agency, {status: "declined", reason}, box);
    });
    if (form) holdDetail(box);
  }

  async function setDispatch(id, agency, body, box) {
    box.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    releaseDetail();
    try {
      const inc = await api("POST", `/api/v1/incidents/${id}/dispatches/${encodeURIComponent(agency)}`, body);
      onIncident(inc, false);
      toast(t("toast.dispatch_set", {id, agency: agencyName(agency), status: t(DISPATCH_KEYS[body.status])}));
    } catch (e) {
      toast(t("toast.failed", {id, message: e.message}), true);
      const fresh = await api("GET", `/api/v1/incidents/${id}`).catch(() => null);
      if (fresh) { state.rows.get(id)?.removeAttribute("data-shape"); onIncident(fresh, false); }
    }
  }

  /** The incident panel's dispatch form: a checkbox per configured agency (marked when it answers on
   *  its own screen), and "confirmed by phone or radio" for the others. */
  function dispatchForm(d) {
    const form = el("form", "dispatch-form");
    form.setAttribute("data-testid", "dispatch-form");
    form.append(el("h4", null, t("dispatch.title")));
    const taken = new Set(dispatchesOf(d).filter((x) => x.status !== "declined").map((x) => x.agency));
    const list = el("div", "dispatch-agencies");
    for (const a of state.settings.agencies) {
      const label = el("label", "dispatch-agency");
      const box = el("input");
      box.type = "checkbox";
      box.value = a.id;
      box.checked = taken.has(a.id);
      box.disabled = taken.has(a.id);
      box.setAttribute("data-testid", `dispatch-agency-${a.id}`);
      label.append(box, val("span", null, agencyName(a.id)));
      if (a.answers_on_screen) label.append(el("span", "on-screen", t("dispatch.on_screen")));
      list.append(label);
    }
    const confirmed = el("label", "dispatch-confirmed");
    const phoned = el("input");
    phoned.type = "checkbox";
    phoned.setAttribute("data-testid", "dispatch-confirmed");
    confirmed.append(phoned, el("span", null, t("dispatch.confirmed")));
    const note = el("input", "dispatch-note");
    note.maxLength = 2000;
    note.placeholder = t("dispatch.note");
    note.setAttribute("data-testid", "dispatch-note");
    const send = el("button", "btn btn-dispatch", t("dispatch.send"));
    send.type = "submit";
    send.setAttribute("data-testid", "dispatch-send");
    form.append(list, confirmed, note, send);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const agencies = [...list.querySelectorAll("input:checked:not(:disabled)")].map((b) => b.value);
      if (!agencies.length) { toast(t("dispatch.pick_one"), true); return; }
      send.disabled = true;
      releaseDetail();
      const body = {agencies, note: note.value.trim() || null, accepted: phoned.checked ? true : null};
      try {
        const inc = await api("POST", `/api/v1/incidents/${d.id}/dispatch`, body);
        onIncident(inc, false);
        toast(t("toast.dispatched", {id: d.id, agency: agencies.map(agencyName).join(", ")}));
      } catch (e) {
        send.disabled = false;
        toast(t("toast.failed", {id: d.id, message: e.message}), true);
      }
    });
    return form;
  }

  function dispatchList(d) {
    const box = el("div", "dispatch-list");
    box.setAttribute("data-testid", "dispatch-list");
    box.append(el("h4", null, t("dispatch.list_title")));
    const may = state.me.role !== "agency";
    for (const x of dispatchesOf(d)) {
      const item = el("div", "dispatch-item");
      item.setAttribute("data-testid", `dispatch-item-${x.agency}`);
      item.append(chip(x, `dispatch-status-${x.agency}`));
      const times = el("div", "dispatch-times");
      for (const [field, key] of Object.entries(DISPATCH_TIME_KEYS)) {
        if (!x[field]) continue;
        const span = el("span", "dispatch-time");
        span.append(el("span", null, t(key)), document.createTextNode(" "), val("span", null, clockTime(x[field], true)));
        times.append(span);
      }
      item.append(times);
      if (x.reason) item.append(el("div", "dispatch-reason", t("dispatch.reason", {reason: x.reason})));
      if (may && nextSteps(x.status).length) item.append(dispatchButtons(d, x, `dispatch-${x.agency}-`));
      box.append(item);
    }
    return box;
  }

  // ---- detail panel -----------------------------------------------------------------------------

  // While someone fills in a form in the panel (ticks agencies, types a reason), live updates of the
  // incident must not draw the panel anew under their hands: it waits until the form is sent.
  function holdDetail(node) {
    if ($("detail").contains(node)) $("detail").dataset.held = "1";
  }

  function releaseDetail() {
    delete $("detail").dataset.held;
  }

  function select(id) {
    releaseDetail();
    // The panel of another incident must not stay clickable while this one's loads.
    if (state.selected !== id) $("detail").replaceChildren();
    state.selected = id;
    for (const [rid, row] of state.rows) row.classList.toggle("selected", rid === id);
    const inc = state.incidents.get(id);
    if (inc && state.map) state.map.panTo([inc.location.lat, inc.location.lon]);
    showDetail(id);
  }

  function joined(parent, parts) {
    parts.forEach((p, i) => {
      if (i) parent.append(document.createTextNode(" · "));
      parent.append(p);
    });
    return parent;
  }

  async function showDetail(id) {
    if ($("detail").dataset.held) return;
    let d;
    try {
      d = await api("GET", `/api/v1/incidents/${id}`);
    } catch (_) {
      return;
    }
    if (state.selected !== id || $("detail").dataset.held) return;
    const box = $("detail");
    box.replaceChildren();
    box.append(joined(el("h3"), [val("span", null, d.id), kindNode(d.kind, "detail-kind"),
      el("span", null, stateText(d))]));
    const where = joined(el("p"), [
      d.location.address ? val("span", null, d.location.address) : el("span", null, t("row.no_address")),
      el("span", null, t("row.area", {area: d.location.area})),
      val("span", null, `${d.location.lat.toFixed(6)}, ${d.location.lon.toFixed(6)}`)]);
    const first = el("p", "muted", t("detail.first", {time: fmtTime(d.created_at), count: d.press_count,
      sources: d.sources.join(", ")}));
    box.append(where, first);
    if (dispatchesOf(d).length) box.append(dispatchList(d));
    if (state.me.role !== "agency" && (d.state === "acknowledged" || d.state === "dispatched") &&
        Array.isArray(d.dispatches)) {
      box.append(dispatchForm(d));
    }
    box.append(el("h4", null, t("detail.history")));
    const hist = el("ol", "history");
    for (const e of d.history) {
      const li = el("li", `hist-${e.kind}`);
      li.append(val("span", "hist-time", fmtTime(e.at)), val("span", "hist-actor", e.actor));
      li.append(historyWhat(e));
      hist.append(li);
    }
    box.append(hist);
    box.append(el("h4", null, t("detail.presses")));
    const presses = el("ol", "presses-list");
    for (const ev of d.events) {
      const li = el("li");
      li.append(val("span", null, fmtTime(ev.received_at)), document.createTextNode(" · "),
        val("span", null, ev.device_id), document.createTextNode(" "),
        el("span", null, t(ev.test ? "detail.seq_test" : "detail.seq", {seq: ev.seq})));
      presses.append(li);
    }
    box.append(presses);
  }

  function historyWhat(e) {
    const what = el("span", "hist-what");
    const detail = e.detail || {};
    if (e.kind === "note") what.textContent = t("hist.note", {note: detail.note});
    else if (e.kind === "escalation" && detail.level === 2) what.textContent = t("hist.escalated2");
    else if (e.kind === "escalation" && detail.dispatch) {
      what.textContent = t("hist.dispatch_unanswered", {agency: agencyName(detail.dispatch)});
    } else if (e.kind === "escalation") {
      what.textContent = t("hist.escalated", {after: detail.after_s ?? "?"});
    } else if (!e.from_state) what.textContent = t("hist.received");
    else {
      const name = (s) => (STATE_SHORT_KEYS[s] ? el("span", null, t(STATE_SHORT_KEYS[s])) : val("span", null, s));
      what.append(name(e.from_state), document.createTextNode(" → "), name(e.to_state));
      if (detail.agency) what.append(document.createTextNode(" ("), val("span", null, agencyName(detail.agency)),
        document.createTextNode(")"));
      if (detail.note) what.append(document.createTextNode(": "), val("span", null, detail.note));
    }
    return what;
  }

  // ---- map --------------------------------------------------------------------------------------

  function initMap() {
    if (!window.L) {
      // Leaflet is served by the command center itself, so this only happens if the page is broken.
      $("map-note").hidden = false;
      $("map-note").textContent = t("map.unavailable");
      return;
    }
    const s = state.settings;
    const map = L.map("map", {zoomControl: false, attributionControl: true}).setView(s.map_center, s.map_zoom);
    // The tile server's credit and Leaflet's are names, the same in every language.
    map.attributionControl.getContainer().dataset.value = "";
    const tiles = L.tileLayer(s.tile_url, {maxZoom: 19, attribution: s.tile_attribution});
    tiles.on("tileerror", () => {
      if (state.tilesFailed) return;
      state.tilesFailed = true;
      const note = $("map-note");
      note.hidden = false;
      note.textContent = t("map.tiles_failed");
    });
    tiles.on("tileload", () => {
      state.tilesFailed = false;
      $("map-note").hidden = true;
    });
    tiles.addTo(map);
    state.map = map;
    drawMapControls();
  }

  function drawMapControls() {
    if (state.zoom) state.zoom.remove();
    state.zoom = L.control.zoom({zoomInTitle: t("map.zoom_in"), zoomOutTitle: t("map.zoom_out")}).addTo(state.map);
    if (state.tilesFailed) $("map-note").textContent = t("map.tiles_failed");
    for (const m of state.markers.values()) m.unbindTooltip();
    updateMarkers([...state.incidents.values()].filter((i) => OPEN.has(i.state)));
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
        color: escalated || inc.needs_dispatch ? "#fde047" : "#0f172a",
        weight: escalated || inc.needs_dispatch ? 4 : 2,
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
      m.bindTooltip(joined(el("span"), [val("span", null, inc.id), kindNode(inc.kind, "tip-kind"),
        val("span", null, inc.location.address)]));
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
    const at = ctx.currentTime + 0.02;
    if (kind === "escalation") {
      for (let i = 0; i < 4; i++) { // a two-tone siren: harder to ignore than the new-alarm beeps
        beep(ctx, at + i * 0.5, 988, 0.22, "sawtooth");
        beep(ctx, at + i * 0.5 + 0.25, 659, 0.22, "sawtooth");
      }
    } else {
      for (let i = 0; i < 3; i++) beep(ctx, at + i * 0.22, 880, 0.14);
    }
  }

  function updateSoundButton() {
    const b = $("sound");
    const left = state.muteUntil - Date.now();
    if (left > 0) {
      b.textContent = t("sound.muted", {s: Math.ceil(left / 1000)});
      b.className = "btn btn-small btn-muted";
    } else if (!state.audio || state.audio.state !== "running") {
      b.textContent = t("sound.enable");
      b.className = "btn btn-small btn-warn";
    } else {
      b.textContent = t("sound.on");
      b.className = "btn btn-small";
    }
  }

  function onSoundButton() {
    ensureAudio();
    if (state.muteUntil > Date.now()) state.muteUntil = 0;
    else if (state.audio && state.audio.state === "running") state.muteUntil = Date.now() + MUTE_MS;
    updateSoundButton();
  }

  // ---- plumbing: gateways that stopped reporting, lost their broker or their SMS modem -----------

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
    // The gateway's own SMS modem down or off the network: the buttons behind it have no backup
    // path. From the latest report, so not for a silent gateway (its report is stale).
    const smsDown = answer.gateways.filter((g) => g.status !== "silent" && g.sms
      && (!g.sms.up || g.sms.registered === false));
    const nameOf = (g) => (g.instance === g.gateway_id ? g.gateway_id : `${g.gateway_id} (${g.instance})`);
    for (const g of silent) {
      banner.append(el("span", "plumbing-line",
        t("plumbing.silent", {name: nameOf(g), at: clockTime(g.last_report_at)})));
    }
    for (const g of unlinked) {
      banner.append(el("span", "plumbing-line plumbing-warn", t("plumbing.unlinked", {name: nameOf(g)})));
    }
    for (const g of smsDown) {
      banner.append(el("span", "plumbing-line plumbing-warn", t("plumbing.sms_down", {name: nameOf(g)})));
    }
    banner.hidden = silent.length + unlinked.length + smsDown.length === 0;
    document.body.dataset.gatewaysSilent = String(silent.length);
    document.body.dataset.gatewaysSmsDown = String(smsDown.length);
    state.gateways = answer.gateways;
    if (!$("view-devices").hidden) drawFirmware();
  }

  function tick() {
    setVal($("clock"), clockTime(null, true));
    for (const [id, row] of state.rows) {
      const inc = state.incidents.get(id);
      if (inc) updateElapsed(row, inc);
    }
    const waiting = [...state.incidents.values()].filter((i) => i.state === "new");
    if (waiting.length && Date.now() - state.lastAlarmSound >= REMIND_EVERY_MS) {
      alarm(waiting.some((i) => i.escalated_at) ? "escalation" : "new-alarm");
    }
    document.title = waiting.length && Math.floor(Date.now() / 1000) % 2
      ? t("app.title_alarm", {count: waiting.length}) : t("app.title");
    updateSoundButton();
  }

  // ---- shifts: who is on duty, signing on, handing over -----------------------------------------

  async function loadShifts() {
    if (!state.me || state.me.role === "agency") return;
    try {
      const [onDuty, mine] = await Promise.all([
        api("GET", "/api/v1/shifts/on-duty", undefined, {signInOn401: false}),
        api("GET", "/api/v1/shifts/current", undefined, {signInOn401: false}).catch((e) => {
          if (e.status === 404) return null;
          throw e;
        }),
      ]);
      state.onDuty = onDuty;
      state.shift = mine;
    } catch (_) {
      state.shift = undefined; // this command center keeps no shifts (or is unreachable): no controls
    }
    drawShift();
  }

  function drawShift() {
    const box = $("shift");
    box.hidden = state.shift === undefined;
    if (state.shift === undefined) return;
    const list = $("on-duty");
    list.replaceChildren(el("span", "on-duty-label", t("shift.on_duty")));
    for (const s of state.onDuty) list.append(val("span", "on-duty-name", s.operator));
    if (!state.onDuty.length) list.append(el("span", "muted", t("shift.nobody")));
    $("shift-sign-on").hidden = state.shift !== null;
    $("shift-handover").hidden = state.shift === null;
  }

  async function signOn() {
    try {
      state.shift = await api("POST", "/api/v1/shifts");
      toast(t("toast.signed_on"));
    } catch (e) {
      toast(t("toast.shift_failed", {message: e.message}), true);
    }
    await loadShifts();
  }

  function toggleHandover() {
    const form = $("handover-form");
    form.hidden = !form.hidden;
    if (form.hidden) return;
    // The successor may be on duty already (offered) or not yet signed on (typed).
    const names = $("handover-names");
    names.replaceChildren();
    for (const s of state.onDuty.filter((x) => x.operator !== state.me.name)) {
      const o = el("option");
      o.value = s.operator;
      names.append(o);
    }
    $("handover-note").focus();
  }

  async function handOver(ev) {
    ev.preventDefault();
    const note = $("handover-note").value.trim();
    if (!note) return;
    try {
      await api("POST", "/api/v1/shifts/current/handover", {note, to: $("handover-to").value.trim() || null});
      $("handover-note").value = "";
      $("handover-to").value = "";
      $("handover-form").hidden = true;
      toast(t("toast.handed_over"));
    } catch (e) {
      toast(t("toast.shift_failed", {message: e.message}), true);
    }
    await loadShifts();
  }

  // ---- devices ----------------------------------------------------------------------------------

  async function loadFaults() {
    const faults = await api("GET", "/api/v1/devices/faults");
    const body = $("faults-body");
    body.replaceChildren();
    // A button offline on MQTT whose alarms still arrive by SMS is marked on every row of it, so
    // that "offline" is never read as "unreachable" (docs/operator.md, "On backup path").
    const onBackup = new Set(faults.filter((f) => f.fault === "on_backup_path").map((f) => f.device_id));
    for (const f of faults) {
      const tr = el("tr", `fault-${f.fault}`);
      const device = val("td", null, f.device_id);
      if (onBackup.has(f.device_id)) {
        const badge = el("span", "path-badge", t("path.backup_badge"));
        badge.setAttribute("data-testid", "backup-badge");
        device.append(" ", badge);
      }
      const detail = Object.entries(f.detail || {}).filter(([k]) => !PATH_TIMES.includes(k))
        .map(([k, v]) => `${k}: ${v}`).join(", ");
      const detailCell = el("td");
      detailCell.append(val("span", null, detail || "–"));
      if (PATH_TIMES.some((k) => k in (f.detail || {}))) {
        detailCell.append(el("div", "path-times", t("path.last_success", {
          mqtt: fmtTime(f.detail.last_mqtt_at), sms: fmtTime(f.detail.last_sms_at)})));
      }
      tr.append(device, el("td", null, faultName(f.fault)),
        el("td", null, t("fault.since", {time: fmtTime(f.since), elapsed: fmtElapsed(serverNow() - Date.parse(f.since))})),
        val("td", null, f.location ? `${f.location.address} (${f.location.area})` : "–"), detailCell);
      body.append(tr);
    }
    $("faults-empty").hidden = faults.length > 0;
  }

  /** The buttons' firmware, from the gateways' latest reports: the versions in service and the latest
   *  rollouts. The instances of one gateway id share its registry, so its latest report stands for it. */
  function drawFirmware() {
    const latest = new Map();
    for (const g of state.gateways.filter((x) => x.firmware)) {
      const seen = latest.get(g.gateway_id);
      if (!seen || Date.parse(g.last_report_at) > Date.parse(seen.last_report_at)) latest.set(g.gateway_id, g);
    }
    const shown = [...latest.values()].sort((a, b) => a.gateway_id.localeCompare(b.gateway_id));
    $("firmware-section").hidden = shown.length === 0;
    document.body.dataset.firmwareRollouts = String(shown.reduce((n, g) => n + g.firmware.rollouts.length, 0));
    if (!shown.length) return;
    const versions = [];
    const rollouts = [];
    for (const g of shown) {
      const inService = Object.entries(g.firmware.versions).sort((a, b) => b[1] - a[1]);
      for (const [version, count] of inService) versions.push([g.gateway_id, version, count]);
      for (const r of g.firmware.rollouts) rollouts.push([g.gateway_id, r, g.firmware]);
    }
    table("firmware-versions", ["col.gateway", "col.version", "col.buttons"], versions, "firmware.no_versions");
    const columns = ["col.gateway", "col.version", "col.percent", "col.state", "col.buttons_by_state"];
    table("firmware-rollouts", columns,
      rollouts.map(([gatewayId, r]) => [gatewayId, r.version, `${r.percent} %`, rolloutState(r), rolloutCounts(r)]),
      "firmware.no_rollouts");
    if (!rollouts.length) return;
    // Under each rollout's row, a row holding the table of its buttons.
    const body = $("firmware-rollouts").tBodies[0];
    const rows = [...body.rows];
    body.replaceChildren();
    for (const [i, [, r, fw]] of rollouts.entries()) {
      const row = rows[i];
      row.className = `rollout-${r.state}`;
      row.dataset.rollout = String(r.id);
      body.append(row);
      const buttons = rolloutButtons(r, fw, columns.length);
      if (buttons) body.append(buttons);
    }
  }

  /** A rollout's buttons as the gateway lists them (the failed first, then those under way), or null
   *  when it lists none; "N more" when the gateway cut its list to its bound. */
  function rolloutButtons(r, fw, span) {
    const all = fw.devices || [];
    const devices = all.filter((d) => d.rollout === r.id);
    const more = (fw.devices_total || 0) > all.length ? Math.max(0, r.targeted - devices.length) : 0;
    if (!devices.length && !more) return null;
    const tr = el("tr", "rollout-buttons");
    tr.dataset.rolloutButtons = String(r.id);
    const td = el("td");
    td.colSpan = span;
    if (devices.length) {
      const tbl = el("table", "table table-compact");
      fillTable(tbl, BUTTON_COLUMNS, devices.map((d) => [d.device_id, buttonState(d), d.firmware || "–",
        updateReason(d), fmtTime(d.updated_ms)]));
      for (const [i, d] of devices.entries()) tbl.tBodies[0].rows[i].className = `button-${d.state}`;
      td.append(tbl);
    }
    if (more) td.append(el("div", "rollout-more", t("firmware.more", {n: more})));
    tr.append(td);
    return tr;
  }

  function buttonState(d) {
    return DEVICE_STATE_KEYS[d.state] ? el("span", "button-state", t(DEVICE_STATE_KEYS[d.state]))
      : val("span", "button-state", d.state);
  }

  /** Why the button's update failed, in the reader's words: a word the console does not know is
   *  shown as the button said it. */
  function updateReason(d) {
    if (d.state !== "failed" || !d.detail) return el("span");
    return UPDATE_REASON_KEYS[d.detail] ? el("span", "rollout-reason", t(UPDATE_REASON_KEYS[d.detail]))
      : val("span", "rollout-reason", d.detail);
  }

  function rolloutState(r) {
    const cell = el("span");
    cell.append(ROLLOUT_STATE_KEYS[r.state] ? el("span", "rollout-state", t(ROLLOUT_STATE_KEYS[r.state]))
      : val("span", "rollout-state", r.state));
    if (r.state === "halted" || r.state === "cancelled") cell.append(haltedReason(r));
    return cell;
  }

  /** Why a rollout stopped, in the reader's words: the gateway sends a code and its numbers (a gateway
   *  of an older release sent a sentence, shown as it is). */
  function haltedReason(r) {
    const c = r.counts;
    if (r.halted_reason === "failures") {
      return el("div", "rollout-reason", t("firmware.halted.failures", {failed: c.failed,
        of: Math.max(0, r.targeted - c.withdrawn), limit: r.max_failed_percent === null ? "–" : r.max_failed_percent}));
    }
    if (r.halted_reason === "cancelled") return el("div", "rollout-reason", t("firmware.halted.cancelled"));
    return val("div", "rollout-reason", r.halted_reason || "–");
  }

  function rolloutCounts(r) {
    const c = r.counts;
    const cell = el("span");
    cell.append(el("div", null, t("firmware.targeted", {targeted: r.targeted, eligible: r.eligible})),
      el("div", "rollout-counts", t("firmware.counts", {offered: c.offered, downloading: c.downloading,
        installed: c.installed, updated: c.updated, failed: c.failed, withdrawn: c.withdrawn})));
    return cell;
  }

  // ---- supervisor -------------------------------------------------------------------------------

  function isoDay(d) {
    return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
  }

  /** A table: headers are catalog keys; cells are data, or an element when they are words. */
  function table(id, headerKeys, rows, emptyKey = "table.none") {
    fillTable($(id), headerKeys, rows, emptyKey);
  }

  function fillTable(tbl, headerKeys, rows, emptyKey = "table.none") {
    tbl.replaceChildren();
    const head = el("tr");
    for (const k of headerKeys) head.append(el("th", null, k ? t(k) : ""));
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "muted", t(emptyKey));
      td.colSpan = headerKeys.length;
      tr.append(td);
      tbody.append(tr);
    }
    for (const r of rows) {
      const tr = el("tr");
      for (const c of r) {
        if (c instanceof Node) { const td = el("td"); td.append(c); tr.append(td); }
        else tr.append(val("td", null, String(c)));
      }
      tbody.append(tr);
    }
    tbl.append(thead, tbody);
  }

  const FIGURE_HEADERS = ["", "fig.incidents", "fig.acknowledge", "fig.dispatch", "fig.resolve", "fig.false_alarms",
    "fig.referrals"];

  function pair(f) {
    return f.count ? `${fmtSeconds(f.median_s)} · ${fmtSeconds(f.p90_s)}` : "–";
  }

  function figureRow(label, g) {
    return [label, g.incidents, pair(g.acknowledge), pair(g.dispatch), pair(g.resolve), g.false_alarms, g.referrals];
  }

  function percent(part, whole) {
    return whole ? `${Math.round(100 * part / whole)} %` : "";
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
    $("stats-zone").textContent = t("stats.zone", {zone: s.timezone, count: s.test_incidents_excluded});
    const o = s.overall;
    const kpis = $("kpis");
    kpis.replaceChildren();
    const median = (f) => t("kpi.median", {value: fmtSeconds(f.median_s)});
    const p90 = (f) => t("kpi.p90", {value: fmtSeconds(f.p90_s)});
    const cards = [
      ["kpi.incidents", String(o.incidents)],
      ["kpi.acknowledge", median(o.acknowledge), p90(o.acknowledge)],
      ["kpi.dispatch", median(o.dispatch), p90(o.dispatch)],
      ["kpi.resolve", median(o.resolve), p90(o.resolve)],
      ["kpi.false_alarms", String(o.false_alarms), percent(o.false_alarms, o.incidents)],
      ["kpi.referrals", String(o.referrals), percent(o.referrals, o.incidents)],
      ["kpi.unacknowledged", String(o.unacknowledged)],
    ];
    for (const [key, value, sub] of cards) {
      const c = el("div", "kpi");
      c.append(el("div", "kpi-label", t(key)), val("div", "kpi-value", value));
      if (sub) c.append(val("div", "kpi-sub", sub));
      kpis.append(c);
    }
    table("by-day", FIGURE_HEADERS, s.by_day.map((g) => figureRow(g.key, g)));
    table("by-agency", FIGURE_HEADERS, s.by_agency.map((g) => figureRow(agencyName(g.key), g)));
    table("by-area", FIGURE_HEADERS, s.by_area.map((g) => figureRow(g.key, g)));
    table("false-alarms", ["col.device", "col.location", "fig.incidents", "fig.false_alarms", "col.rate", "fig.referrals"],
      s.false_alarms_by_device.map((d) => [d.device_id, `${d.address} (${d.area})`, d.incidents, d.false_alarms,
        `${Math.round(d.rate * 100)} %`, d.referrals]));
    table("offline", ["col.device", "col.offline_since", "col.location"], s.devices_offline.map((f) => [
      f.device_id, el("span", null, t("fault.since", {time: fmtTime(f.since),
        elapsed: fmtElapsed(serverNow() - Date.parse(f.since))})),
      f.location ? `${f.location.address} (${f.location.area})` : "–"]), "table.none_offline");
    const dl = $("settings");
    dl.replaceChildren();
    for (const [k, v] of [
      ["settings.escalate_after", val("dd", null, t("time.s", {s: settings.escalation_after_s}))],
      ["settings.webhook", settings.escalation_webhook_url ? val("dd", null, settings.escalation_webhook_url)
        : el("dd", null, t("settings.not_configured"))],
      ["settings.webhook_pending", val("dd", null, settings.escalation_webhook_pending)],
      ["settings.reports_pending", val("dd", null, settings.state_reports_pending)],
    ]) {
      dl.append(el("dt", null, t(k)), v);
    }
    table("audit", ["col.when", "col.who", "col.what", "col.target", "col.detail"], audit.map((a) => [
      fmtTime(a.at), a.actor, a.action, a.target || "",
      a.detail ? Object.entries(a.detail).map(([k, v]) => `${k}: ${v}`).join(", ") : ""]));
    await loadOperatorFigures(from, to);
  }

  /** Per operator: answered, time to acknowledge, time to dispatch (when the command center has shifts). */
  async function loadOperatorFigures(from, to) {
    const section = $("operator-figures-section");
    // The API takes instants: the chosen days from the browser's midnight, the last day included.
    const since = new Date(`${from}T00:00:00`);
    const until = new Date(`${to}T00:00:00`);
    until.setDate(until.getDate() + 1);
    const q = `since=${encodeURIComponent(since.toISOString())}&until=${encodeURIComponent(until.toISOString())}`;
    let rows;
    try {
      rows = await api("GET", `/api/v1/stats/operators?${q}`);
    } catch (_) {
      section.hidden = true;
      return;
    }
    section.hidden = false;
    table("operator-figures", ["col.operator", "op.answered", "op.ack_mean", "op.ack_median", "op.ack_max",
      "op.dispatched", "op.dispatch_mean", "op.dispatch_median"], rows.map((r) => [r.operator, r.answered,
      fmtSeconds(r.ack_s_mean), fmtSeconds(r.ack_s_median), fmtSeconds(r.ack_s_max), r.dispatched,
      fmtSeconds(r.dispatch_s_mean), fmtSeconds(r.dispatch_s_median)]));
  }

  // ---- tabs and wiring --------------------------------------------------------------------------

  function showView(name) {
    for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === name);
    for (const v of ["incidents", "devices", "supervisor"]) $(`view-${v}`).hidden = v !== name;
    if (name === "devices") {
      loadFaults().catch((e) => toast(e.message, true));
      drawFirmware();
    }
    if (name === "supervisor") loadSupervisor().catch((e) => toast(e.message, true));
    if (name === "incidents" && state.map) setTimeout(() => state.map.invalidateSize(), 0);
  }

  function wire() {
    $("login-form").addEventListener("submit", onLogin);
    $("logout").addEventListener("click", onLogout);
    $("sound").addEventListener("click", onSoundButton);
    document.addEventListener("click", ensureAudio);
    for (const b of document.querySelectorAll("[data-lang]")) b.addEventListener("click", () => setLanguage(b.dataset.lang));
    for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
    $("shift-sign-on").addEventListener("click", signOn);
    $("shift-handover").addEventListener("click", toggleHandover);
    $("handover-form").addEventListener("submit", handOver);
    for (const type of ["input", "change"]) $("detail").addEventListener(type, (ev) => holdDetail(ev.target));
    const today = new Date();
    $("stats-to").value = isoDay(today);
    $("stats-from").value = isoDay(new Date(today.getTime() - 6 * 86400000));
    $("stats-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      loadSupervisor().catch((e) => toast(e.message, true));
    });
  }

  async function boot() {
    try { state.lang = localStorage.getItem("siaga.lang") === "en" ? "en" : "id"; } catch (_) { /* fine */ }
    await loadCatalog();
    applyI18n();
    wire();
    try {
      state.me = await api("GET", "/api/v1/session", undefined, {signInOn401: false});
    } catch (e) {
      showLogin(e.status === 401 ? "" : t("login.no_answer", {message: e.message}));
      return;
    }
    await start();
  }

  window.siagaConsole = state; // for diagnosis from the browser's developer tools
  boot();
})();
