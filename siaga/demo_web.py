"""The demo's simulator page: the virtual buttons in a browser, with their ring lights.

Hold a button with the mouse (or a finger) for the long press; the ring light and the state under
it are the button's own outputs, streamed as they change. The operator console of the command
center is the other half of the demo.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, StreamingResponse

from siaga.devices.sites import Site
from siaga.devices.virtual import VirtualButton

SAYS = {
    "no_network": "no network", "idle": "ready", "armed": "release to send, press again to cancel",
    "cancelled": "cancelled", "sending": "sending…", "received": "alarm received",
    "acknowledged": "help is coming", "dispatched": "help is on the way", "resolved": "resolved",
    "false_alarm": "closed", "fault": "fault: call a technician", "test_mode": "test mode",
}


def create_sim_app(buttons: dict[str, VirtualButton], sites: dict[str, Site], shown: dict[str, str],
                   console_url: str) -> FastAPI:
    app = FastAPI(title="Siaga demo: virtual buttons", docs_url=None, redoc_url=None)

    def snapshot() -> dict[str, dict[str, Any]]:
        return {d: {"state": shown.get(d, ""), "says": SAYS.get(shown.get(d, ""), shown.get(d, "")),
                    "led": b.hal.led} for d, b in buttons.items()}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        cards = "\n".join(
            f'<div class="card" data-id="{d}"><div class="ring"><button class="sos" aria-label="SOS {d}">SOS</button>'
            f'</div><div class="name">{html.escape(sites[d].place)}</div>'
            f'<div class="id">{d} · {html.escape(sites[d].area)}</div>'
            f'<div class="state">…</div></div>' for d in buttons)
        return PAGE.replace("{cards}", cards).replace("{console}", console_url)

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
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Siaga demo: virtual buttons</title>
<style>
 body { font-family: system-ui, sans-serif; background: #1b1f24; color: #e8eaed; margin: 0; padding: 24px; }
 h1 { font-size: 20px; margin: 0 0 4px; } p { color: #a8b0b9; margin: 0 0 20px; } a { color: #7cc4ff; }
 .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 16px; }
 .card { background: #262b31; border-radius: 12px; padding: 18px; text-align: center; }
 .ring { width: 132px; height: 132px; margin: 0 auto 12px; border-radius: 50%; display: grid; place-items: center;
         background: #3a2626; box-shadow: inset 0 0 0 8px #552f2f; transition: box-shadow .05s, background .05s; }
 .card.lit .ring { background: #ffd9d2; box-shadow: 0 0 28px 8px #ff5a3c, inset 0 0 0 8px #ff5a3c; }
 .sos { width: 96px; height: 96px; border-radius: 50%; border: 0; background: #c62828; color: #fff;
        font-size: 26px; font-weight: 800; cursor: pointer; user-select: none; touch-action: none; }
 .sos:active { transform: scale(.96); background: #a51f1f; }
 .name { font-weight: 600; } .id { color: #8b949e; font-size: 12px; margin: 2px 0 10px; }
 .state { min-height: 22px; font-size: 15px; }
 .card[data-state=acknowledged] .state, .card[data-state=dispatched] .state { color: #7ee787; font-weight: 700; }
 .card[data-state=sending] .state, .card[data-state=armed] .state { color: #ffb86b; }
</style></head>
<body>
<h1>Siaga demo: virtual buttons</h1>
<p>Hold a red button for two seconds to raise an alarm. Watch it arrive in the
<a href="{console}" target="_blank">operator console</a>; acknowledge it there and this button's
light says help is coming.</p>
<div class="grid">
{cards}
</div>
<script>
for (const card of document.querySelectorAll('.card')) {
  const id = card.dataset.id, btn = card.querySelector('.sos');
  const send = (action) => fetch(`/api/buttons/${id}/${action}`, {method: 'POST'});
  btn.addEventListener('pointerdown', (e) => { btn.setPointerCapture(e.pointerId); send('press'); });
  btn.addEventListener('pointerup', () => send('release'));
  btn.addEventListener('pointercancel', () => send('release'));
}
function apply(states) {
  for (const [id, s] of Object.entries(states)) {
    const card = document.querySelector(`.card[data-id="${id}"]`);
    if (!card) continue;
    card.classList.toggle('lit', s.led);
    card.dataset.state = s.state;
    card.querySelector('.state').textContent = s.says;
  }
}
fetch('/api/buttons').then(r => r.json()).then(apply);
new EventSource('/api/events').onmessage = (e) => apply(JSON.parse(e.data));
</script>
</body></html>
"""
