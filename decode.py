"""Batch decoding: `python decode.py --checkpoint DIR --method ar --input X.jsonl --output Y.jsonl`.

Thin entry point; the logic lives in `bltjax/decoding/decode.py` (importable from notebooks).
"""

import sys

from bltjax.decoding.decode import main
from bltjax.multihost import fail_fast

if __name__ == "__main__":
  with fail_fast():  # several processes: one failing must not leave the others waiting
    sys.exit(main())
