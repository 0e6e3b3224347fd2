"""A pytest plugin for bench/gpu_check.py: every case's result is on disk the moment the case ends.

    python -m pytest bench/test_kernels.py -p bench.case_log --case-log out/kernels.jsonl \
        --case-benchmarks out/kernels.json

pytest-benchmark writes its JSON once, when the session ends, and junit XML is likewise written at
the end: a step stopped by its time limit (three of four steps on the H200, 2026-11-26) lost every
number it had measured. With this plugin,
  --case-log FILE         gets one JSON line per finished test (nodeid, outcome, seconds, the
                          first lines of a failure), flushed as it ends;
  --case-benchmarks FILE  is rewritten (atomically) after each benchmark, in pytest-benchmark's own
                          format ({"benchmarks": [...]}, each as its --benchmark-json writes it),
                          so bench/gpu_summary.py reads it either way.
A time limit then loses only the case in flight.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("case_log", "per-case results written as each case ends (bench/gpu_check.py)")
    group.addoption("--case-log", default=None, help="JSON Lines file: one line per finished test")
    group.addoption("--case-benchmarks", default=None,
                    help="pytest-benchmark-format JSON, rewritten after every benchmark")


class CaseLog:
    def __init__(self, log: str | None, benchmarks: str | None):
        self.log = Path(log) if log else None
        self.benchmarks_path = Path(benchmarks) if benchmarks else None
        self.benchmarks: list[dict] = []
        for path in (self.log, self.benchmarks_path):
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
        if self.log:
            self.log.write_text("")

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # one line per test: its call, or the setup/teardown that failed or skipped it
        if self.log is None or not (report.when == "call" or report.outcome != "passed"):
            return
        line = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                "seconds": round(report.duration, 3)}
        if report.failed:
            line["error"] = str(report.longrepr).splitlines()[-12:]
        with open(self.log, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem):
        bench = getattr(item, "funcargs", {}).get("benchmark")
        stats = getattr(bench, "stats", None)
        if self.benchmarks_path is not None and stats is not None:
            self.benchmarks.append(stats.as_dict(include_data=False))
            tmp = self.benchmarks_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"benchmarks": self.benchmarks}, indent=1) + "\n")
            os.replace(tmp, self.benchmarks_path)
        yield


def pytest_configure(config: pytest.Config) -> None:
    log, benchmarks = config.getoption("--case-log"), config.getoption("--case-benchmarks")
    if log or benchmarks:
        config.pluginmanager.register(CaseLog(log, benchmarks), "case_log_writer")
