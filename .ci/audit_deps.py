"""The dependency half of `make audit`: pip-audit on the installed packages, or a clear NOT RUN.

Why ``--vulnerability-service pypi``: CI reaches pypi.org and nothing else (OSV's api.osv.dev is
out of reach), and PyPI's JSON API lists each release's known vulnerabilities.

Why probe first: pip-audit asks ``https://pypi.org/pypi/<name>/<version>/json`` for every
package. Where that API does not answer (no network, or a mirror that serves only the simple
index), pip-audit skips each package as "not found on PyPI", prints "No known vulnerabilities
found" and exits 0: an audit that never ran would read as a clean one. So one such request is
tried first; when it fails, this script says the audit did not run and why, and exits 0 (a CI
without PyPI's JSON API is not a vulnerability; the bandit scan before it still gates). When it
answers, pip-audit runs and its exit status is this script's: 1 on a known vulnerability.

Extra arguments go to pip-audit (e.g. ``--ignore-vuln ID`` for an accepted finding: say why next
to it in the Makefile).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from importlib.metadata import version

#: The per-release JSON document pip-audit reads, for a package every environment has.
PROBE = "https://pypi.org/pypi/pip/{version}/json"


def main(argv: list[str]) -> int:
    url = PROBE.format(version=version("pip"))
    try:
        with urllib.request.urlopen(url, timeout=15):  # a constant https URL
            pass
    except (urllib.error.URLError, OSError) as error:  # HTTPError (404, 5xx) is a URLError
        print(
            "pip-audit: NOT RUN. PyPI's vulnerability API does not answer from here\n"
            f"  (GET {url}: {error}).\n"
            "  pip-audit would skip every package and still report no known vulnerabilities.\n"
            "  Run `make audit` where https://pypi.org/pypi/<name>/<version>/json answers, or,\n"
            "  with access to api.osv.dev: .venv/bin/pip-audit --vulnerability-service osv",
            flush=True,
        )
        return 0
    command = [sys.executable, "-m", "pip_audit", "--vulnerability-service", "pypi"]
    command += ["--skip-editable", "--progress-spinner", "off", *argv]  # recicl is this checkout
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
