"""Make the README's two studio screenshots (docs/images/studio-generate.png, desktop, and
docs/images/studio-gallery-phone.png, 375 px wide) from a fresh ``limner studio`` with the
bundled ``emoji`` model, driven through the page in Debian's Chromium (as tests/web does).

    .venv/bin/python scripts/studio_screenshots.py [--out docs/images]

Takes a few minutes on 2 CPU cores (every image is generated on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
GALLERY_PROMPTS = ["red heart", "grinning face with big eyes", "cat face", "woman with red hair",
                   "green apple", "man astronaut, medium skin tone"]


def call(url: str, method: str, path: str, body=None):
    req = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Origin": url})
    with urllib.request.urlopen(req, timeout=60) as res:
        return json.loads(res.read() or b"null")


def wait_job(url: str, job_id: str) -> None:
    while (job := call(url, "GET", f"/api/jobs/{job_id}"))["state"] not in ("done", "failed", "cancelled"):
        time.sleep(0.5)
    if job["state"] != "done":
        raise SystemExit(f"job {job_id} {job['state']}: {job.get('error')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    home = Path(tempfile.mkdtemp(prefix="limner-shots-"))
    server = subprocess.Popen([sys.executable, "-m", "limner", "studio", "--home", str(home), "--port", str(port)],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        for _ in range(240):
            try:
                call(url, "GET", "/api/health")
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900}, base_url=url)
            page.goto("/#/generate")
            form = page.locator("#page-generate")
            form.get_by_label("Model").select_option("emoji")
            form.get_by_label("Prompt", exact=True).fill("woman astronaut, dark skin tone")
            form.get_by_label("Seed", exact=True).fill("1")
            form.get_by_label("Count").fill("4")
            form.get_by_role("button", name="Generate", exact=True).click()
            page.locator("li.result").nth(3).wait_for(timeout=600_000)
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(500)
            args.out.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out / "studio-generate.png"))
            for i, prompt in enumerate(GALLERY_PROMPTS):
                job = call(url, "POST", "/api/generate", {"model": "emoji", "prompt": prompt, "seed": 10 + i, "num": 2})
                wait_job(url, job["job"]["id"])
            phone = browser.new_page(viewport={"width": 375, "height": 760}, base_url=url, device_scale_factor=2)
            phone.goto("/#/gallery")
            phone.locator(".gallery-card").nth(7).wait_for()
            phone.wait_for_load_state("networkidle")
            phone.screenshot(path=str(args.out / "studio-gallery-phone.png"))
            browser.close()
        print(f"wrote {args.out / 'studio-generate.png'} and {args.out / 'studio-gallery-phone.png'}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
