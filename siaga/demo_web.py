"""The demo's simulator page: the virtual buttons in a browser, with their ring lights.

Hold a button with the mouse (or a finger) for the long press; the ring light and the state under
it are the button's own outputs, streamed as they change. The operator console of the command
center is the other half of the demo.

Every word on the page comes from the `demo` message catalog (siaga/locale/demo.json): the page
opens in Bahasa Indonesia (or the language of `?lang=`) and carries both languages, so that its
ID | EN switch changes the words in place without breaking the stream of button states.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, StreamingResponse

from siaga import i18n
from siaga.devices.sites import Site
from siaga.devices.virtual import VirtualButton

DOMAIN = "demo"


def says(state: str, lang: str) -> str:
    """What a button's lights mean, in words (`state.<name>` of the catalog; an unknown state as it is)."""
    key = f"state.{state}"
    return i18n.text(DOMAIN, key, lang) if key in i18n.catalog(DOMAIN) else state


def _page_texts() -> dict[str, dict[str, str]]:
    """The catalog as the page's script takes it: language -> key -> text."""
    return {lang: {key: entry[lang] for key, entry in i18n.catalog(DOMAIN).items()} for lang in i18n.LANGUAGES}


def _render(lang: str, cards: str, console_url: str) -> str:
    def tr(key: str) -> str:
        return html.escape(i18n.text(DOMAIN, key, lang))

    link = f'<a id="console-link" href="{html.escape(console_url)}" target="_blank">{tr("page.console")}</a>'
    intro = tr("page.intro").replace("{console}", link)
    texts = json.dumps(_page_texts(), ensure_ascii=False).replace("</", "<\\/")
    return (PAGE.replace("{lang}", lang).replace("{title}", tr("page.title")).replace("{intro}", intro)
            .replace("{switch}", tr("page.switch")).replace("{cards}", cards).replace("{texts}", texts))


def create_sim_app(buttons: dict[str, VirtualButton], sites: dict[str, Site], shown: dict[str, str],
                   console_url: str) -> FastAPI:
    app = FastAPI(title="Siaga demo: virtual buttons", docs_url=None, redoc_url=None)

    def snapshot() -> dict[str, dict[str, Any]]:
        # `says` in Bahasa Indonesia for API readers; the page words each state in its own language.
        return {d: {"state": shown.get(d, ""), "says": says(shown.get(d, ""), i18n.DEFAULT_LANGUAGE),
                    "led": b.hal.led} for d, b in buttons.items()}

    @app.get("/", response_class=HTMLResponse)
    async def page(lang: str | None = None) -> str:
        chosen = i18n.language(lang)
        label = html.escape(i18n.text(DOMAIN, "button.label", chosen))
        cards = "\n".join(
            f'<div class="card" data-id="{d}"><div class="ring"><button class="sos" aria-label="{label} {d}">SOS'
            f'</button></div><div class="name">{html.escape(sites[d].place)}</div>'
            f'<div class="id">{d} · {html.escape(sites[d].area)}</div>'
            f'<div class="state">…</div></div>' for d in buttons)
        return _render(chosen, cards, console_url)

    @app.post("/api/buttons/{device_id}/{action}")
    async def press(device_id: str, action: str) -> dict[str, bool]:
        button = buttons.get(device_id)
        if button is None or action not in ("press", "release"):
            raise HTTPException(404, "no such button or action")
        if action == "press":
            button.hal.held.add("sos")
        else:
            button.hal.held.discard("sos")
        return {"held": "sos" in button.hal.held}

    @app.get("/api/buttons")
    async def state() -> dict[str, dict[str, Any]]:
        return snapshot()

    @app.get("/api/events")
    async def events() -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            last: dict[str, dict[str, Any]] = {}
            while True:
                now = snapshot()
                changed = {d: v for d, v in now.items() if last.get(d) != v}
                if changed:
                    yield f"data: {json.dumps(changed)}\n\n"
                    last = now
                await asyncio.sleep(0.05)
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    return app


PAGE = """<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
 body { font-family: system-ui, sans-serif; background: #1b1f24; color: #e8eaed; margin: 0; padding: 24px; }
 header { display: flex; align-items: baseline; justify-content: space-between; gap: 16px; }
 h1 { font-size: 20px; margin: 0 0 4px; } p { color: #a8b0b9; margin: 0 0 20px; } a { color: #7cc4ff; }
 .lang button { background: none; border: 1px solid #444c56; color: #a8b0b9; padding: 2px 8px; cursor: pointer; }
 .lang button[aria-pressed=true] { background: #e8eaed; color: #1b1f24; font-weight: 700; }
 .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 16px; }
 .card { background: #262b31; border-radius: 12px; padding: 18px; text-align: center; }
 .ring { width: 132px; height: 132px; margin: 0 auto 12px; border-radius: 50%; display: grid; place-items: center;
         background: #3a2626; box-shadow: inset 0 0 0 8px #552f2f; transition: box-shadow .05s, background .05s; }
 .card.lit .ring { background: #ffd9d2; box-shadow: 0 0 28px 8px #ff5a3c, inset 0 0 0 8px #ff5a3c; }
 /* "Help is coming" (acknowledged) is the ring steady on. "Help is on the way" (dispatched) must not be
    mistaken for it: a green ring that pulses, and a badge under the state. */
 .card[data-state=dispatched] .ring { animation: on-the-way 1s ease-in-out infinite; }
 .card[data-state=dispatched].lit .ring { background: #d7f7dd;
                                           box-shadow: 0 0 28px 8px #2ea043, inset 0 0 0 8px #2ea043; }
 @keyframes on-the-way { 50% { box-shadow: 0 0 6px 1px #2ea043, inset 0 0 0 8px #1f6f30; background: #20352a; } }
 .sos { width: 96px; height: 96px; border-radius: 50%; border: 0; background: #c62828; color: #fff;
        font-size: 26px; font-weight: 800; cursor: pointer; user-select: none; touch-action: none; }
 .sos:active { transform: scale(.96); background: #a51f1f; }
 .name { font-weight: 600; } .id { color: #8b949e; font-size: 12px; margin: 2px 0 10px; }
 .state { min-height: 22px; font-size: 15px; }
 .card[data-state=acknowledged] .state { color: #ffb3a6; font-weight: 700; }
 .card[data-state=dispatched] .state { color: #7ee787; font-weight: 700; }
 .card[data-state=dispatched] .state::before { content: "\\279C  "; }
 .card[data-state=sending] .state, .card[data-state=armed] .state { color: #ffb86b; }
</style></head>
<body>
<header><h1 data-i18n="page.title">{title}</h1>
<div class="lang" role="group" aria-label="{switch}" data-i18n-label="page.switch">
<button type="button" data-lang="id">ID</button> | <button type="button" data-lang="en">EN</button></div></header>
<p id="intro">{intro}</p>
<div class="grid">
{cards}
</div>
<script>
const TEXTS = {texts};
let lang = document.documentElement.lang;
let states = {};
const t = (key) => (TEXTS[lang] && TEXTS[lang][key]) || TEXTS.en[key] || key;
for (const card of document.querySelectorAll('.card')) {
  const id = card.dataset.id, btn = card.querySelector('.sos');
  const send = (action) => fetch(`/api/buttons/${id}/${action}`, {method: 'POST'});
  btn.addEventListener('pointerdown', (e) => { btn.setPointerCapture(e.pointerId); send('press'); });
  btn.addEventListener('pointerup', () => send('release'));
  btn.addEventListener('pointercancel', () => send('release'));
}
function says(state) {
  const key = 'state.' + state;
  return (key in TEXTS[lang]) ? t(key) : state;
}
function apply(changed) {
  Object.assign(states, changed);
  for (const [id, s] of Object.entries(changed)) {
    const card = document.querySelector(`.card[data-id="${id}"]`);
    if (!card) continue;
    card.classList.toggle('lit', s.led);
    card.dataset.state = s.state;
    card.querySelector('.state').textContent = says(s.state);
  }
}
function setLang(next) {
  lang = next;
  document.documentElement.lang = next;
  document.title = t('page.title');
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll('[data-i18n-label]')) {
    el.setAttribute('aria-label', t(el.dataset.i18nLabel));
  }
  const [before, after] = t('page.intro').split('{console}');
  const intro = document.getElementById('intro'), link = document.getElementById('console-link');
  link.textContent = t('page.console');
  intro.replaceChildren(before, link, after ?? '');
  for (const card of document.querySelectorAll('.card')) {
    card.querySelector('.sos').setAttribute('aria-label', `${t('button.label')} ${card.dataset.id}`);
  }
  for (const b of document.querySelectorAll('.lang button')) {
    b.setAttribute('aria-pressed', String(b.dataset.lang === next));
  }
  apply(states);
  try { localStorage.setItem('siaga-demo-lang', next); } catch (e) { /* private mode: the choice lasts this page */ }
}
for (const b of document.querySelectorAll('.lang button')) b.addEventListener('click', () => setLang(b.dataset.lang));
let saved = null;
try { saved = localStorage.getItem('siaga-demo-lang'); } catch (e) { saved = null; }
setLang(new URLSearchParams(location.search).has('lang') || !TEXTS[saved] ? lang : saved);
fetch('/api/buttons').then(r => r.json()).then(apply);
new EventSource('/api/events').onmessage = (e) => apply(JSON.parse(e.data));
</script>
</body></html>
"""
