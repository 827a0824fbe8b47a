"""Job functions for rq_flow.py: the RQ worker imports them by name."""


def add(a, b):
    return a + b
