"""Batch decoding: `python decode.py --checkpoint DIR --method ar --input X.jsonl --output Y.jsonl`.

Thin entry point; the logic lives in `bltjax/decode.py` (importable from notebooks).
"""

import sys

from bltjax.decode import main

if __name__ == "__main__":
  sys.exit(main())
