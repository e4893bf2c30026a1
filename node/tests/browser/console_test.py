"""The web console in a real browser (Debian's chromium, driven by Playwright), against a real
secured three-node cluster with an agent, all on loopback:

- a workflow submitted through the JSON API shows one DAG node per step, and `deploy` turns
  succeeded on the open page without a reload (live, over Server-Sent Events);
- a running workflow is cancelled with its button (after its confirmation);
- a reader's session sees the page but no cancel button, and a forced cancel gets 403;
- with the node serving the page stopped, another node serves the same session;
- a screenshot of each page lands in $BATON_ARTIFACTS (default artifacts/browser in the work tree).

Run by scripts/browser-test (which builds the binaries and installs Playwright and chromium).
"""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/baton-target"))
BATOND = TARGET / "debug" / "batond"
BATON = TARGET / "debug" / "baton"
ARTIFACTS = Path(os.environ.get("BATON_ARTIFACTS", ROOT / "artifacts" / "browser"))
CHROMIUM = os.environ.get("BATON_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_S = 60


def free_ports(n):
    """n distinct free loopback ports (bound at once, then released)."""
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Cluster:
    def __init__(self, work):
        self.work = work
        self.pki = work / "pki"
        grpc = free_ports(3)
        http = free_ports(3)
        self.grpc = {i + 1: p for i, p in enumerate(grpc)}
        self.http = {i + 1: p for i, p in enumerate(http)}
        self.procs = {}
        self.endpoints = ",".join(f"127.0.0.1:{p}" for p in grpc)
        run([BATOND, "certs", "--out", self.pki, "--node", "1=127.0.0.1", "--node",
             "2=127.0.0.1", "--node", "3=127.0.0.1", "--agent", "a1", "--client", "ops"])
        self.admin = (self.pki / "bootstrap-token").read_text().strip()
        (self.pki / "client-ops" / "token").write_text(self.admin)
        self.ssl = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
        members = ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.grpc.items())
        for i in self.grpc:
            self.start_node(i, members)

    def start_node(self, i, members):
        log = open(self.work / f"node{i}.log", "ab")
        self.procs[f"node{i}"] = subprocess.Popen(
            [BATOND, "--node-id", str(i), "--listen", f"127.0.0.1:{self.grpc[i]}",
             "--data-dir", self.work / f"node{i}", "--initial-cluster", members,
             "--http-listen", f"127.0.0.1:{self.http[i]}",
             "--tls-ca", self.pki / "ca.pem", "--tls-cert", self.pki / f"node-{i}.pem",
             "--tls-key", self.pki / f"node-{i}-key.pem",
             "--bootstrap-token-file", self.pki / "bootstrap-token"],
            stdout=log, stderr=subprocess.STDOUT)

    def url(self, node, path):
        return f"https://127.0.0.1:{self.http[node]}{path}"

    def api(self, node, method, path, body=None, token=None, content_type="application/json"):
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(self.url(node, path), data=data, method=method)
        request.add_header("Authorization", f"Bearer {token or self.admin}")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, context=self.ssl, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def baton(self, *args):
        out = run([BATON, "--credentials", self.pki / "client-ops", "--endpoints",
                   self.endpoints, "-o", "json", *args])
        return json.loads(out)

    def start_agent(self):
        token = self.baton("token", "create", "--name", "a1", "--role", "agent")["token"]
        (self.pki / "agent-a1" / "token").write_text(token)
        reader = self.baton("token", "create", "--name", "viewer", "--role", "reader")["token"]
        log = open(self.work / "agent.log", "ab")
        self.procs["agent"] = subprocess.Popen(
            [BATON, "--credentials", self.pki / "agent-a1", "--endpoints", self.endpoints,
             "agent", "--name", "a1", "--slots", "8"],
            stdout=log, stderr=subprocess.STDOUT)
        return reader

    def stop(self, name):
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)


def run(args):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True,
                          text=True, timeout=120).stdout


def wait_until(what, probe, timeout=TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
            if value:
                return value
        except (OSError, urllib.error.URLError, subprocess.CalledProcessError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def login(page, cluster, node, token, next_path="/workflows"):
    page.goto(cluster.url(node, next_path))
    page.wait_for_url(lambda url: "/login?" in url)
    page.fill("textarea[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url)


def main():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="baton-browser-"))
    cluster = Cluster(work)
    ok = False
    try:
        wait_until("the cluster to answer with the bootstrap token",
                   lambda: cluster.api(1, "GET", "/api/v1/cluster")[0] == 200)
        reader = cluster.start_agent()
        wait_until("the agent to connect",
                   lambda: any(a["connected"] for a in
                               cluster.api(1, "GET", "/api/v1/agents")[1]["agents"]))

        # Submit the pipeline through the JSON API on node 2, and hold it before `deploy` runs:
        # the page must see deploy succeed live.
        spec = (ROOT / "examples" / "build-test-deploy.yaml").read_text()
        status, submitted = cluster.api(2, "POST", "/api/v1/workflows", spec,
                                        content_type="application/yaml")
        assert status == 201, submitted
        wid = submitted["workflow_id"]
        status, paused = cluster.api(2, "POST", f"/api/v1/workflows/{wid}/pause")
        assert status == 200 and paused["changed"], paused
        _, got = cluster.api(1, "GET", f"/api/v1/workflows/{wid}")
        steps = [s["name"] for s in got["spec"]["steps"]]

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox"])
            admin = browser.new_context(ignore_https_errors=True,
                                        viewport={"width": 1400, "height": 900})
            page = admin.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            login(page, cluster, 1, cluster.admin, f"/workflows/{wid}")
            expect(page.locator("svg[data-workflow] g.step")).to_have_count(len(steps))
            shown = sorted(page.eval_on_selector_all(
                "g.step", "nodes => nodes.map(n => n.dataset.step)"))
            assert shown == sorted(steps), (shown, steps)
            deploy = page.locator('g.step[data-step="deploy"]')
            assert deploy.get_attribute("data-state") != "succeeded"
            # A marker that a reload would wipe.
            page.evaluate("window.__sameDocument = true")
            status, _ = cluster.api(3, "POST", f"/api/v1/workflows/{wid}/resume")
            assert status == 200
            expect(deploy).to_have_attribute("data-state", "succeeded", timeout=TIMEOUT_S * 1000)
            assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
            expect(page.locator("#workflow-state")).to_have_text("succeeded",
                                                                 timeout=TIMEOUT_S * 1000)
            # The facts follow too: resumed, and finished.
            expect(page.locator("#fact-paused")).to_be_hidden()
            expect(page.locator("#fact-finished")).not_to_have_text("—")
            # A step's details.
            page.locator('g.step[data-step="flaky-integration-tests"]').click()
            expect(page.locator("#step-panel h3")).to_have_text("flaky-integration-tests")
            expect(page.locator("#step-panel")).to_contain_text("Earlier attempts")
            page.screenshot(path=str(ARTIFACTS / "workflow.png"), full_page=True)

            # Cancel a running workflow with its button.
            sleeper = "name: long-sleep\nsteps:\n  - name: nap\n    exec:\n      command: [sleep, '300']\n"
            status, long_run = cluster.api(1, "POST", "/api/v1/workflows", sleeper,
                                           content_type="application/yaml")
            assert status == 201, long_run
            lid = long_run["workflow_id"]
            page.goto(cluster.url(1, f"/workflows/{lid}"))
            expect(page.locator('g.step[data-step="nap"]')).to_have_attribute(
                "data-state", "running", timeout=TIMEOUT_S * 1000)
            page.click('button[data-action="cancel"]')
            expect(page.locator("#workflow-state")).to_have_text("cancelled",
                                                                 timeout=TIMEOUT_S * 1000)

            page.goto(cluster.url(1, "/workflows"))
            expect(page.locator(f'tr[data-workflow="{wid}"]')).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "workflows.png"), full_page=True)
            page.goto(cluster.url(1, "/agents"))
            expect(page.locator('tr[data-agent="a1"]')).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "agents.png"), full_page=True)
            page.goto(cluster.url(1, "/cluster"))
            expect(page.locator("tr[data-member]")).to_have_count(3)
            page.screenshot(path=str(ARTIFACTS / "cluster.png"), full_page=True)
            page.goto(cluster.url(1, "/schedules"))
            page.screenshot(path=str(ARTIFACTS / "schedules.png"), full_page=True)

            # A reader sees a running workflow's page, but no cancel; forcing one gets 403.
            status, held = cluster.api(1, "POST", "/api/v1/workflows", sleeper,
                                       content_type="application/yaml")
            hid = held["workflow_id"]
            viewer = browser.new_context(ignore_https_errors=True).new_page()
            login(viewer, cluster, 2, reader, f"/workflows/{hid}")
            expect(viewer.locator('g.step[data-step="nap"]')).to_be_visible()
            expect(viewer.locator('button[data-action="cancel"]')).to_have_count(0)
            forced = viewer.evaluate(
                f"""async () => {{
                    const page = await fetch('/workflows/{hid}/cancel', {{method: 'POST',
                        headers: {{'Content-Type': 'application/x-www-form-urlencoded'}},
                        body: 'csrf=x', redirect: 'manual'}});
                    const api = await fetch('/api/v1/workflows/{hid}/cancel', {{method: 'POST'}});
                    return [page.status, api.status];
                }}""")
            assert forced == [403, 403], forced
            _, still = cluster.api(1, "GET", f"/api/v1/workflows/{hid}")
            assert still["state"] == "running", still["state"]

            # A team's token sees its own namespace only: its workflows, and another's as
            # missing. The admin sees every namespace at once, each row naming its own.
            status, _ = cluster.api(1, "POST", "/api/v1/namespaces", '{"name": "team-a"}')
            assert status == 201, status
            team = cluster.baton("-n", "team-a", "token", "create", "--name", "team-a",
                                 "--role", "submitter")["token"]
            status, mine = cluster.api(2, "POST", "/api/v1/workflows?namespace=team-a",
                                       (ROOT / "examples" / "hello.yaml").read_text(),
                                       token=team, content_type="application/yaml")
            assert status == 201, mine
            tid = mine["workflow_id"]
            team_page = browser.new_context(ignore_https_errors=True).new_page()
            login(team_page, cluster, 2, team, "/workflows")
            expect(team_page.locator("select[data-namespace]")).to_have_value("team-a")
            expect(team_page.locator(f'tr[data-workflow="{tid}"]')).to_be_visible()
            expect(team_page.locator(f'tr[data-workflow="{wid}"]')).to_have_count(0)
            team_page.screenshot(path=str(ARTIFACTS / "namespace.png"), full_page=True)
            response = team_page.goto(cluster.url(2, f"/workflows/{wid}"))
            assert response.status == 404, response.status
            page.goto(cluster.url(1, "/workflows?namespace=*"))
            expect(page.locator(f'tr[data-workflow="{tid}"]')).to_contain_text("team-a")
            expect(page.locator(f'tr[data-workflow="{wid}"]')).to_contain_text("default")

            # Stop the node serving the admin's page; carry on from another node.
            cluster.stop("node1")
            wait_until("node 3 to serve reads again",
                       lambda: cluster.api(3, "GET", f"/api/v1/workflows/{hid}")[0] == 200)
            page.goto(cluster.url(3, f"/workflows/{hid}"))
            expect(page.locator('g.step[data-step="nap"]')).to_be_visible(
                timeout=TIMEOUT_S * 1000)
            page.click('button[data-action="cancel"]')
            expect(page.locator("#workflow-state")).to_have_text("cancelled",
                                                                 timeout=TIMEOUT_S * 1000)
            page.screenshot(path=str(ARTIFACTS / "after-failover.png"), full_page=True)
            browser.close()
        ok = True
        print(f"browser-test: passed; screenshots in {ARTIFACTS}")
    finally:
        cluster.stop_all()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"browser-test: FAILED; logs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
