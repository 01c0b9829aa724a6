"""IEC 62443-3-3 evidence from a topology: per zone, per requirement, evidence and gaps.

Pure like the rest of `topology`: the gateway's runtime evidence and the test results
are passed in by the application layer (`zonegate.iec62443`), which also renders.
"""
