"""The parents' page in headless Chromium (Debian's chromium, driven by playwright)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from server import db as sdb
from server.app import Settings, TalkieServer

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_parent_logs_in_sees_todays_conversation_and_reads_the_transcript(tmp_path: Path) -> None:
    db_path = tmp_path / "server.db"
    con = sdb.open_db(str(db_path))
    device = sdb.device_for_token(con, sdb.add_device(con, "Mia's bear"))
    assert device is not None
    sdb.set_password(con, "parent pass 123")
    now = time.time()
    conv = "d0000000-0000-4000-8000-000000000001"
    sdb.upsert_batch(con, device, {
        "conversations": [{"uuid": conv, "title": "why do cats purr", "active": False,
                           "metadata": {}, "started_at": now - 120, "ended_at": now - 60}],
        "messages": [
            {"uuid": "e0000000-0000-4000-8000-000000000001", "conversation_uuid": conv,
             "content": "why do cats purr", "type": "text", "sender": "user",
             "processing_time_ms": None, "created_at": now - 110, "usage": {}},
            {"uuid": "e0000000-0000-4000-8000-000000000002", "conversation_uuid": conv,
             "content": "Cats purr when they feel cosy <and> safe!", "type": "text",
             "sender": "assistant", "processing_time_ms": 900, "created_at": now - 100,
             "usage": {"input_tokens": 40, "output_tokens": 60, "total_tokens": 100}}]})
    con.close()
    server = TalkieServer(Settings(db=str(db_path), host="127.0.0.1", port=0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = server.url
    today = time.strftime("%Y-%m-%d", time.gmtime(now - 120))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page()
            page.goto(base + "/")
            assert page.url.endswith("/login")
            page.fill("#password", "wrong one")
            page.click("#login")
            assert "Wrong password" in page.inner_text("body")
            page.fill("#password", "parent pass 123")
            page.click("#login")
            page.wait_for_url(base + "/")
            day = page.locator(f"section.day[data-day='{today}']")
            assert "1 conversations, 2 messages, 100 tokens" in day.inner_text()
            day.locator("a.conversation", has_text="why do cats purr").click()
            page.wait_for_url(f"{base}/conversations/{conv}")
            transcript = page.inner_text("#transcript")
            assert "why do cats purr" in transcript
            assert "Cats purr when they feel cosy <and> safe!" in transcript  # escaped, shown
            shot = tmp_path / "parents-transcript.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 1000
            print(f"screenshot: {shot}")
            page.click("text=Log out")
            page.wait_for_url(base + "/login")
            page.goto(base + "/")
            assert page.url.endswith("/login")  # the session is gone
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
