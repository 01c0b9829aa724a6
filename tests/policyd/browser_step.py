"""One browser visit with headless Chromium (Playwright), run inside a network namespace.

`browser_step.py URL STEPS_JSON [SCREENSHOT]`: opens URL, performs the steps (each one
of {"fill": SELECTOR, "value": TEXT}, {"select": SELECTOR, "value": VALUE},
{"click": SELECTOR}, {"post_from_elsewhere": ACTION_URL, "fields": {...}}), takes the
screenshot if asked, and prints one JSON line: the last navigation's status, the URL
and the text of the page's main section. Chromium is Debian's (/usr/bin/chromium).
"""

from __future__ import annotations

import html
import json
import sys

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def main() -> None:
    url, steps = sys.argv[1], json.loads(sys.argv[2])
    shot = sys.argv[3] if len(sys.argv) > 3 else None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        response = page.goto(url)
        status = response.status if response else 0
        for step in steps:
            if "fill" in step:
                page.fill(step["fill"], step["value"])
            elif "select" in step:
                page.select_option(step["select"], step["value"])
            elif "click" in step:
                with page.expect_navigation() as nav:
                    page.click(step["click"])
                status = nav.value.status if nav.value else 0
            elif "post_from_elsewhere" in step:
                # A page from another origin (here: about:blank) that posts a form to the
                # console: what a malicious site would make a logged-in browser do.
                inputs = "".join(
                    f'<input name="{html.escape(k)}" value="{html.escape(v)}">'
                    for k, v in step["fields"].items()
                )
                page.goto("about:blank")
                page.set_content(
                    f'<form id="f" method="post" action="{html.escape(step["post_from_elsewhere"])}">'
                    f"{inputs}</form>"
                )
                with page.expect_navigation() as nav:
                    page.eval_on_selector("#f", "f => f.submit()")
                status = nav.value.status if nav.value else 0
        main_el = page.query_selector("main") or page.query_selector("body")
        text = main_el.inner_text() if main_el else page.content()
        if shot:
            page.screenshot(path=shot, full_page=True)
        print(json.dumps({"status": status, "url": page.url, "text": text}))
        browser.close()


if __name__ == "__main__":
    main()
