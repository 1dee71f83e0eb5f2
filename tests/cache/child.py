"""A build in its own process: ``python -m tests.cache.child STORE WORK REQUEST.json [PROVIDER]``.

Prints the Build as JSON on success. Used by the tests that kill builds or run them in
parallel processes; the executor does not purge at start, so leftovers stay for the test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pytest_ocibuild.build.request_io import load_request
from tests.cache.conftest import CountingRuntime, make_executor


def main(argv: list[str]) -> int:
    root, work, request = Path(argv[0]), Path(argv[1]), Path(argv[2])
    provider = argv[3] if len(argv) > 3 else "materialize"
    record = work.parent / "runs.txt"
    runtime = CountingRuntime("runc", state_dir=work / "runc-state", record=record)
    ex = make_executor(root, work, provider=provider, runtime=runtime)
    print("started", flush=True)
    build = ex.build(load_request(request))
    print(json.dumps({**build.to_dict(), "stats": ex.stats.to_dict()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
