"""The parents' page: small server-rendered HTML, every value escaped."""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;max-width:46rem;margin:1.5rem auto;padding:0 1rem;
color:#222;background:#fdfcf8}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem;border-bottom:1px solid #ddd}
a{color:#2a5d9f}.muted{color:#777;font-size:.9rem}
.msg{margin:.5rem 0;padding:.5rem .8rem;border-radius:.6rem;max-width:80%}
.user{background:#e8f0fe}.assistant{background:#fff3d6;margin-left:auto}
.system{background:#eee;font-style:italic}
form.inline{display:inline}.err{color:#b00020}
"""


def _page(title: str, body: str, *, logged_in: bool = True) -> bytes:
    logout = ('<form class="inline" method="post" action="/logout">'
              '<button type="submit">Log out</button></form>') if logged_in else ""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<p class=muted><a href='/'>Talkie history</a> {logout}</p>{body}</body></html>"
            ).encode()


def _time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M")


def login(error: str = "") -> bytes:
    err = f"<p class=err role=alert>{escape(error)}</p>" if error else ""
    return _page("Log in", f"""<h1>Talkie: log in</h1>{err}
<form method=post action=/login>
<label>Password <input type=password name=password id=password autofocus required></label>
<button type=submit id=login>Log in</button></form>""", logged_in=False)


def index(days: list[dict[str, Any]]) -> bytes:
    if not days:
        return _page("Conversations", "<h1>Conversations</h1><p>No conversations yet. "
                                      "They appear here once the box has synced.</p>")
    parts = ["<h1>Conversations</h1>"]
    for d in days:
        parts.append(f"<section class=day data-day='{escape(d['day'])}'><h2>{escape(d['day'])}"
                     f" <span class=muted>{len(d['conversations'])} conversations, "
                     f"{d['messages']} messages, {d['tokens']} tokens</span></h2><ul>")
        for c in d["conversations"]:
            title = c["title"] or "(untitled)"
            parts.append(f"<li><a class=conversation href='/conversations/{escape(c['uuid'])}'>"
                         f"{escape(title)}</a> <span class=muted>{_time(c['started_at'])} UTC, "
                         f"{c['n']} messages, {c['tokens']} tokens, {escape(c['device'])}"
                         f"</span></li>")
        parts.append("</ul></section>")
    return _page("Conversations", "".join(parts))


def conversation(conv: dict[str, Any], messages: list[dict[str, Any]]) -> bytes:
    tokens = sum(m["total_tokens"] or 0 for m in messages)
    who = {"user": "Child", "assistant": "Toy", "system": "System"}
    rows = "".join(
        f"<div class='msg {escape(m['sender'])}'><span class=muted>{who.get(m['sender'], '')} "
        f"{_time(m['created_at'])}</span><br>{escape(m['content'])}</div>" for m in messages)
    title = conv["title"] or "(untitled)"
    return _page(title, f"<h1>{escape(title)}</h1><p class=muted>{escape(conv['device'])}, "
                        f"started {_time(conv['started_at'])} UTC, {len(messages)} messages, "
                        f"{tokens} tokens</p><div id=transcript>{rows}</div>")


def not_found() -> bytes:
    return _page("Not found", "<h1>Not found</h1><p><a href='/'>Back to conversations</a></p>")
