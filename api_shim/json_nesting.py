"""How deeply a raw JSON body nests, measured without parsing it.

json.loads, pydantic and any walker over the parsed value recurse once per level, so a body of
100,000 nested arrays raises RecursionError in whichever touches it first. The request guard
refuses such bodies from their bytes, before anything recursive sees them.
"""

from __future__ import annotations

import re
from itertools import accumulate

# Deeper than any body either surface takes (a FlowIQ list message nests 6 levels) and far below
# Python's recursion limit.
MAX_JSON_DEPTH = 64

# A JSON string: brackets inside it are text, not structure. Unrolled so a long string is one
# linear match without backtracking.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def nests_deeper_than(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the arrays and objects of ``body`` nest more than ``limit`` levels deep.

    For a body that is not valid JSON the answer is a guess either way; the parser refuses it next.
    """
    # Fast path: with no more opening brackets than the limit (counting those inside strings too)
    # the nesting cannot pass it. Two C-level counts: a normal body ends here.
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(_STEP[b] for b in brackets), default=0) > limit
