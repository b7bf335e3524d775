"""Look at a page in a real browser: headless Chromium screenshots and layout checks.

`check_page(html_file, width, height, ids)` renders a copy of the page with a small script
injected first in <head>: it collects JavaScript errors (window.onerror, unhandled
rejections, console.error) and, after load, writes into <body data-...> the page's scroll
width against the window width, the elements wider than the window, and the bounding-box
top of each element id in `ids`; Chromium's `--dump-dom` prints the DOM and they are read
back. `screenshot(html_file, png, width, height)` writes a PNG of the first screen.
Needs a `chromium` (or chrome) binary; `find_chromium()` returns None when there is none.
"""

from __future__ import annotations

import html as html_mod
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from maskshare.run.layout import RunLayout

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
         "--no-first-run", "--disable-extensions", "--disable-background-networking"]

PROBE = """<script>(function(){var E=[];window.__maskshareErrors=E;
window.addEventListener('error',function(e){E.push(String(e.message||e));});
window.addEventListener('unhandledrejection',function(e){E.push('unhandled: '+String(e.reason));});
var ce=console.error;console.error=function(){E.push('console.error: '+
Array.prototype.join.call(arguments,' '));return ce.apply(console,arguments);};
window.addEventListener('load',function(){setTimeout(function(){
var d=document.body.dataset,W=window.innerWidth,de=document.documentElement,wide=[];
function boxed(el){for(var p=el.parentElement;p&&p!==document.body;p=p.parentElement){
if(getComputedStyle(p).overflowX!=='visible')return true;}return false;}
document.querySelectorAll('body *').forEach(function(el){var r=el.getBoundingClientRect();
if(r.width>0&&r.right>W+1&&wide.length<20&&!boxed(el)){wide.push(el.tagName.toLowerCase()+
(el.id?'#'+el.id:'')+(el.className&&el.className.baseVal===undefined?'.'+el.className:'')+
' right='+Math.round(r.right));}});
var tops={};(%IDS%).forEach(function(i){var el=document.getElementById(i);
tops[i]=el?Math.round(el.getBoundingClientRect().top):null;});
d.msWidth=W;d.msHeight=window.innerHeight;d.msScrollWidth=de.scrollWidth;
d.msWide=JSON.stringify(wide);d.msTops=JSON.stringify(tops);d.msErrors=JSON.stringify(E);
d.msDone='1';},0);});})();</script>"""


@dataclass
class PageCheck:
    width: int            # the window's inner width and height, as the page saw them
    height: int
    scroll_width: int     # document width: > width means the page scrolls sideways
    wide: list[str]       # elements reaching past the right edge (outside a scroll box)
    tops: dict            # element id -> top of its bounding box (None: no such element)
    errors: list[str]     # JavaScript errors and console.error calls

    @property
    def overflows(self) -> bool:
        return self.scroll_width > self.width


def find_chromium() -> str | None:
    env = os.environ.get("MASKSHARE_CHROMIUM")
    if env:
        return env if shutil.which(env) or Path(env).is_file() else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def _run(args: list[str], timeout: float) -> str:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium found (install Debian's `chromium`, or set "
                                "MASKSHARE_CHROMIUM to a Chrome/Chromium binary)")
    with tempfile.TemporaryDirectory(prefix="maskshare-chromium-") as prof:
        r = subprocess.run([exe, *FLAGS, f"--user-data-dir={prof}", *args], capture_output=True,
                           text=True, timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"chromium exited {r.returncode}: {r.stderr[-2000:]}")
    return r.stdout


def screenshot(html_file: str | Path, png: str | Path, width: int = 1000, height: int = 900,
               timeout: float = 60) -> Path:
    """A PNG of the page's first screen at width x height."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--window-size={width},{height}", f"--screenshot={png}",
          Path(html_file).resolve().as_uri()], timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png


def check_page(html_file: str | Path, width: int = 1000, height: int = 900,
               ids: tuple[str, ...] = (), timeout: float = 60) -> PageCheck:
    """Load a probed copy of the page (beside it, so relative links resolve) and measure."""
    src = Path(html_file).resolve()
    text = src.read_text()
    probe = PROBE.replace("%IDS%", json.dumps(list(ids)))
    text = re.sub(r"<head>", "<head>" + probe, text, count=1) if "<head>" in text \
        else probe + text
    fd, tmp = tempfile.mkstemp(prefix=".probe-", suffix=".html", dir=src.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        dom = _run([f"--window-size={width},{height}", "--virtual-time-budget=3000",
                    "--dump-dom", Path(tmp).as_uri()], timeout)
    finally:
        os.unlink(tmp)
    m = re.search(r"<body([^>]*)>", dom)
    attrs = dict(re.findall(r'data-ms-([a-z-]+)="([^"]*)"', m.group(1) if m else ""))
    if attrs.get("done") != "1":
        raise RuntimeError(f"the page never finished loading in chromium: {dom[:500]}")

    def js(k):
        return json.loads(html_mod.unescape(attrs[k]))

    return PageCheck(width=int(attrs["width"]), height=int(attrs["height"]),
                     scroll_width=int(attrs["scroll-width"]), wide=js("wide"), tops=js("tops"),
                     errors=js("errors"))


def screenshots(run: str | Path, widths: tuple[int, ...] = (1000, 1600), height: int = 900,
                out: str | Path | None = None) -> list[Path]:
    """RUN/screenshots/{report,groups}-<width>.png: the run's report and the groups page of
    its main grouping."""
    import yaml

    layout = RunLayout(run)
    out = Path(out) if out is not None else layout.screenshots
    kind = yaml.safe_load(layout.config.read_text())["grouping"]["kind"]
    pages = [("report", layout.report), ("groups", layout.groups_page(kind))]
    return [screenshot(f, out / f"{name}-{w}.png", w, height)
            for name, f in pages if f.is_file() for w in widths]
