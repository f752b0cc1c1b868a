#!/usr/bin/env python3
"""Seed memory pins into pinsd: a thin wrapper around `pinsctl seed`.

The runbook's command keeps working unchanged:

    MACHINE_JWT=$MACHINE_SECRET_TOKEN python3 ops/seed_memory_pins.py \
        --file ops/memory_pins_seed.json --base http://localhost:8000

Every argument is passed to `pinsctl seed` as given, and so is the environment (MACHINE_JWT,
MACHINE_TOKEN, MACHINE_SECRET_TOKEN, SEED_TIMEOUT, SEED_RETRIES, SEED_WAIT_TIMEOUT,
DATABASE_URL); `pinsctl seed --help` (or this script's --help) documents them. The exit status is
pinsctl's: 0 all pins seeded (and verified when asked), 1 a pin failed or was not verified,
2 usage error, a missing or malformed seed file (nothing written), or --wait timed out.

pinsctl is found as $PINSCTL_BIN, else on PATH, else <repo>/build-release/pinsctl, else
<repo>/build/pinsctl. Standard library only.
"""

import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_pinsctl():
    """The pinsctl to run, or None."""
    explicit = os.environ.get("PINSCTL_BIN")
    if explicit:
        return explicit
    on_path = shutil.which("pinsctl")
    if on_path:
        return on_path
    for rel in ("build-release", "build"):
        cand = os.path.join(REPO, rel, "pinsctl")
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def main(argv):
    ctl = find_pinsctl()
    if ctl is None:
        sys.stderr.write(
            "seed_memory_pins.py: pinsctl not found: set PINSCTL_BIN, put pinsctl on PATH, or "
            "build it (tools/run.sh builds %s)\n" % os.path.join(REPO, "build-release", "pinsctl"))
        return 2
    if not (os.path.isfile(ctl) and os.access(ctl, os.X_OK)):
        sys.stderr.write("seed_memory_pins.py: PINSCTL_BIN=%s is not an executable file\n" % ctl)
        return 2
    try:
        os.execv(ctl, [ctl, "seed"] + list(argv))
    except OSError as e:
        sys.stderr.write("seed_memory_pins.py: cannot run %s: %s\n" % (ctl, e.strerror))
        return 2
    return 2  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
