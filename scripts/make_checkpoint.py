#!/usr/bin/env python3
"""Write a random-weight jina-reranker-v3 checkpoint in the published layout.

    python scripts/make_checkpoint.py OUT_DIR --size tiny
    python scripts/make_checkpoint.py OUT_DIR --size full     # 0.6B, real cost

The generator is `reranker.testing.checkpoint` (the tests use it too).
"""
from __future__ import annotations

import sys

from reranker.testing.checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
