"""compiler/gallery.py and `nnspec gallery`: headers, the site's files and links, escaping, and a real browser.

The browser test needs Debian's `chromium` (apt-get install chromium); it is skipped, saying so, without it.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from nnspec.cli import main
from nnspec.compiler.gallery import build_gallery, group_of, read_header

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot program is not installed")

HOSTILE = """# hostile — a spec whose comments try to inject <script>alert("x")</script> & friends
# group: C
# source: seed 001:10-20, and "quoted" text
model Hostile {
    input x: f32[B, 4]
    target y: f32[B, 2]
    loss l = mse_loss(x |> linear(2, name="fc"), y)   # </pre><img src=x onerror=alert(1)>
}
"""


def test_read_header():
    h = read_header("# mlp — the notes' MNIST classifier\n# source: seed 000:471-505 (class CNN ...),\n"
                    "#         002:717-826\n#\n# More text.\n\nmodel M {}\n")
    assert h.title == "the notes' MNIST classifier"
    assert h.refs == ["000:471-505", "002:717-826"]
    assert h.text.endswith("More text.") and h.group is None
    assert group_of("mlp", h) == "A" and group_of("lstm", h) == "B" and group_of("brand_new", h) == "other"
    assert group_of("lstm", read_header("# x — y\n# group: D\n")) == "D"


def _site(tmp_path, specs):
    hostile = tmp_path / "hostile.nn"
    hostile.write_text(HOSTILE, encoding="utf-8")
    return build_gallery(tmp_path / "site", specs=[*specs, str(hostile)])


@needs_dot
def test_gallery_files_links_and_escaping(tmp_path):
    report = _site(tmp_path, ["chain_rule_demo", "rnn_vanilla"])
    site = tmp_path / "site"
    assert report.index == site / "index.html" and not report.failures
    assert {p.name for p in report.pages} == {"chain_rule_demo.html", "rnn_vanilla.html", "hostile.html"}
    index = report.index.read_text(encoding="utf-8")
    for page in ("chain_rule_demo.html", "rnn_vanilla.html", "hostile.html"):
        assert f'href="{page}"' in index
    assert "002:563-579" in index and "Group C" in index  # source lines in the notes; the header's group
    for html_file in [report.index, *report.pages]:
        html = html_file.read_text(encoding="utf-8")
        refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
        assert refs and all(not re.match(r"[a-z]+:|/", r) for r in refs), "links are relative: the site works offline"
        for ref in refs:
            assert (site / ref).is_file(), f"{html_file.name} links to a missing {ref}"
    rnn = (site / "rnn_vanilla.html").read_text(encoding="utf-8")
    for model in ("RNNManyToOne", "RNNManyToMany", "RNNOneToMany"):
        assert f'id="model-{model}"' in rnn
    assert "rnn.hh.weight" in rnn and "scan" in rnn  # the summary table
    hostile = (site / "hostile.html").read_text(encoding="utf-8")
    assert "<script>alert" not in hostile and "&lt;script&gt;alert" in hostile
    assert "<img src=x" not in hostile and "&lt;/pre&gt;&lt;img src=x" in hostile
    assert report.images == 2 * (2 + 3 + 1) and report.size_bytes > 10_000


@needs_dot
def test_cli_gallery(tmp_path):
    result = CliRunner().invoke(main, ["gallery", "-o", str(tmp_path), "--spec", "chain_rule_demo", "-f", "png"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "1 pages, 4 images" in result.output
    assert (tmp_path / "img" / "chain_rule_demo.ChainRuleDemo.forward.png").read_bytes().startswith(b"\x89PNG")


def test_cli_gallery_without_graphviz(tmp_path, monkeypatch):
    from nnspec.compiler import render
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    result = CliRunner().invoke(main, ["gallery", "-o", str(tmp_path / "site"), "--spec", "chain_rule_demo"])
    assert result.exit_code == 1 and "apt-get install graphviz" in result.output
    assert not (tmp_path / "site").exists()


def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@needs_dot
@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_gallery_in_a_headless_browser(tmp_path):
    report = _site(tmp_path, ["chain_rule_demo", "resnet50"])
    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}"]
    for page in [report.index, *report.pages]:
        done = subprocess.run([*browser, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                              capture_output=True, text=True, timeout=60, check=False)
        html = re.search(r"<html[^>]*>", done.stdout)
        assert html, f"{page.name}: no DOM from the browser: {done.stderr[-500:]}"
        state = re.search(r'data-images="([^"]*)"', html.group(0))
        assert state and re.fullmatch(r"ok [1-9]\d*", state.group(1)), \
            f"{page.name}: images did not all load: {state.group(1) if state else 'no check ran'}"
    shot = tmp_path / "index.png"
    subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1280,2000", report.index.as_uri()],
                   capture_output=True, timeout=60, check=False)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
