"""What SM120 has, as the audit checks it: 101376 B of shared memory per block (static and dynamic
together), no warpgroup MMA, no 5th-generation tensor core or TMEM, no cluster launch on an SM120 path."""

from __future__ import annotations

import re

from harness.results import metrics as M

SHARED_BYTES = 101376  # cudaDevAttrMaxSharedMemoryPerBlockOptin on compute capability 12.0
# instructions of SM90/SM100 that SM120 does not have: warpgroup MMA, 5th-gen tensor core and TMEM
FORBIDDEN_PTX = re.compile(r"\b(wgmma\.[\w.]+|tcgen05\.[\w.]+)")
FORBIDDEN_SASS = re.compile(r"\b(HGMMA|UTCHMMA|UTCQMMA|UTCMMA|UTCBAR|LDTM|STTM)\b")
# SGLang keeps its cluster paths off SM120 (topk v2's is ~144 KB of shared memory): a cluster launch on
# an SM120 path means such a guard was bypassed
CEILINGS = {M.SHARED_BYTES: float(SHARED_BYTES), M.FORBIDDEN_INSTRUCTIONS: 0.0, M.CLUSTER_LAUNCHES: 0.0}
