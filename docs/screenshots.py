"""Screenshots of a rendered report page, as a reader sees it in Chromium: the top of the page
and one table (for the README and the issue tracker).

    python docs/screenshots.py reports/standard/index.html docs/report-top.png docs/report-table.png \\
        --table table2_frozen

Uses Playwright with Debian's Chromium (`apt-get install chromium`); never downloads a browser.
"""

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("top", type=Path, help="PNG of the page's first screen (1,400 x 900)")
    parser.add_argument("table", type=Path, help="PNG of one table")
    parser.add_argument("--table", dest="table_id", default="table2_frozen", help="the table's id on the page")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(args.page.resolve().as_uri())
            page.screenshot(path=str(args.top))
            table = page.locator(f"table#T_{args.table_id}").first
            if table.count() == 0:
                table = page.locator("table").first
            table.screenshot(path=str(args.table))
        finally:
            browser.close()


if __name__ == "__main__":
    main()
