"""benchmarks/readme_figures.py: the commands it runs are the README's, and it parses pytest.

The script itself runs the whole suite, so the test only checks its plan (``--dry-run``) and
its parsing of pytest's summary line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme_figures  # noqa: E402


def test_dry_run_names_machine_and_the_readme_commands() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/readme_figures.py", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = done.stdout
    assert "CPUs (" in out and "Python " in out and "load average" in out
    readme = (ROOT / "README.md").read_text("utf-8")
    for name in ("api", "flood"):
        command = next(line for line in out.splitlines() if line.startswith(f"{name}: "))
        quoted = command.split(": ", 1)[1].replace("python ", "", 1)
        assert quoted in readme, f"README does not show the {name} command: {quoted}"


def test_unknown_section_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/readme_figures.py", "--only", "speed"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown section 'speed'; accepted: tests, engine, cli, api, flood" in done.stderr


def test_pytest_summary() -> None:
    out = "....\n===== 851 passed, 3 skipped in 117.20s (0:01:57) =====\n"
    assert readme_figures.pytest_summary(out) == ("851 passed, 3 skipped", 117.2)
    assert readme_figures.pytest_summary("12 passed in 0.50s\n") == ("12 passed", 0.5)
