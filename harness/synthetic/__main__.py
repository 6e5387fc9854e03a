"""Generate the stand-in in the cache unless it is there: `python -m harness.synthetic small|full`, what the
harness runs, in a process of its own, when it needs the stand-in."""

import sys

from harness.synthetic.write import make_synthetic

if __name__ == "__main__":
    make_synthetic(sys.argv[1])
