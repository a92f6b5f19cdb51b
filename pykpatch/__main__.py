"""``python -m pykpatch``: the kpatch command; ``python -m pykpatch build ...`` runs kpatch-build."""

import sys

from pykpatch.cli import kpatch, kpatch_build


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("build", "kpatch-build"):
        return kpatch_build.main(sys.argv[2:])
    return kpatch.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
