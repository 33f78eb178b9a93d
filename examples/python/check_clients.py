#!/usr/bin/env python3
"""End-to-end check of the example clients against a real server (run by run.sh and CI).

Starts `kasuhara-guard serve` on free loopback ports (port 0; the bound addresses are read
from its JSON log), subscribes with subscribe_alerts.py, streams sample_transcript.txt with
screen_transcript.py, scrapes /metrics, then stops the server with SIGTERM. Every check
prints ok/FAIL; the exit status is non-zero if any failed.
"""

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
TENANT = "py-ci"


class Server:
    """A kasuhara-guard child process whose JSON log lines are collected as they come."""

    def __init__(self, binary, lexicon_dir):
        self.process = subprocess.Popen(
            [binary, "serve", "--addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
             "--lexicon-dir", str(lexicon_dir), "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, encoding="utf-8",
        )
        self.lines = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append(None)  # end of log
            self.changed.notify_all()

    def address_of(self, message, timeout=120):
        """The `addr` field of the first log event whose message is `message`."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines:
                    if line is None:
                        raise RuntimeError("server exited:\n" + "".join(self.lines[:-1]))
                    try:
                        fields = json.loads(line).get("fields", {})
                    except json.JSONDecodeError:
                        continue
                    if fields.get("message") == message:
                        return fields["addr"]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no {message!r} log line within {timeout}s")
                self.changed.wait(left)

    def log(self):
        with self.changed:
            return "".join(line for line in self.lines if line)


def run_checks(binary, lexicon_dir):
    results = []

    def check(name, ok, detail=""):
        results.append(ok)
        print(f"{'ok' if ok else 'FAIL'}: {name}" + (f" ({detail})" if detail and not ok else ""))

    server = Server(binary, lexicon_dir)
    try:
        grpc_addr = server.address_of("serving")
        metrics_addr = server.address_of("serving metrics")
        print(f"server: gRPC {grpc_addr}, metrics {metrics_addr}")

        python = sys.executable
        subscriber = subprocess.Popen(
            [python, str(HERE / "subscribe_alerts.py"), "--addr", grpc_addr, "--tenant", TENANT,
             "--summaries", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
        )
        ready = subscriber.stderr.readline().strip()
        check("subscriber is subscribed", ready == "subscribed", ready)

        screened = subprocess.run(
            [python, str(HERE / "screen_transcript.py"), "--addr", grpc_addr, "--tenant", TENANT,
             "--conversation-id", "py-ci-1", str(HERE / "sample_transcript.txt")],
            capture_output=True, text=True, encoding="utf-8", timeout=60,
        )
        check("screen_transcript exits 0", screened.returncode == 0, screened.stderr)
        responses = [json.loads(line) for line in screened.stdout.splitlines()]
        verdicts = {int(r["verdict"]["seq"]): r["verdict"] for r in responses if "verdict" in r}
        check("one verdict per segment", sorted(verdicts) == [1, 2, 3, 4, 5, 6], sorted(verdicts))

        def categories(seq):
            return {a["category"] for a in verdicts.get(seq, {}).get("alerts", [])}

        check("complaint and agent lines stay silent",
              not categories(1) and not categories(2) and not categories(6))
        check("土下座しろ raises DOGEZA", "CATEGORY_DOGEZA" in categories(4), categories(4))
        check("ぶっ殺すぞ raises ATTACK", "CATEGORY_ATTACK" in categories(5), categories(5))
        summary = responses[-1].get("summary", {}) if responses else {}
        check("the stream ends with a summary", summary.get("conversationId") == "py-ci-1",
              responses[-1:])

        try:
            out, err = subscriber.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            subscriber.kill()
            out, err = subscriber.communicate()
        check("subscriber exits 0 after the summary", subscriber.returncode == 0, err)
        events = [json.loads(line) for line in out.splitlines()]
        alerted = {e["alert"]["category"] for e in events if "alert" in e}
        check("subscriber saw the DOGEZA alert", "CATEGORY_DOGEZA" in alerted, alerted)
        check("subscriber saw the summary", any("summary" in e for e in events))

        with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        check("metrics count the segments",
              'kasuhara_segments_total{speaker="customer",kind="final"} 4' in metrics,
              [l for l in metrics.splitlines() if l.startswith("kasuhara_segments_total")])
        check("metrics count the DOGEZA alert",
              'kasuhara_alerts_total{category="DOGEZA",severity=' in metrics)
    finally:
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            code = "killed after 30s"
    check("SIGTERM stops the server with status 0", code == 0, code)
    log = server.log()
    check("the log holds no transcript text", "土下座" not in log and "殺" not in log)
    check("the log is JSON lines", all(line.startswith("{") for line in log.splitlines()))
    passed = sum(results)
    print(f"python clients: {passed} passed, {len(results) - passed} failed")
    return passed == len(results)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True, help="the kasuhara-guard binary")
    parser.add_argument("--lexicon-dir", required=True, help="lexicon directory")
    args = parser.parse_args()
    sys.exit(0 if run_checks(args.bin, args.lexicon_dir) else 1)


if __name__ == "__main__":
    main()
